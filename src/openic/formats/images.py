"""Image decode, encode and resize with the same pixels MXNet 1.9.1 (OpenCV) produces.

MXNet decodes with ``cv::imdecode(IMREAD_COLOR)`` and swaps BGR to RGB; ``im2rec`` encodes with ``cv2.imencode``
and resizes with ``cv2.resize`` (bilinear). This module gives the same results without OpenCV:

* JPEG decode: simplejpeg (libjpeg-turbo, accurate DCT, fancy upsampling), bit-identical to MXNet.
* PNG decode: Pillow, with libpng's conversions as OpenCV requests them (16-bit → 8-bit by dropping the low byte,
  alpha dropped without compositing, palette expanded, grayscale replicated).
* JPEG encode: Pillow's libjpeg-turbo with libjpeg defaults (4:2:0, islow DCT, JFIF header), byte-identical to
  ``cv2.imencode('.jpg', bgr, [IMWRITE_JPEG_QUALITY, q])``; simplejpeg's TurboJPEG encoder is not.
* PNG encode: libpng's row filter choice and zlib settings re-done, byte-identical to
  ``cv2.imencode('.png', bgr, [IMWRITE_PNG_COMPRESSION, level])``.
* Resize: OpenCV's fixed-point ``INTER_LINEAR`` re-done in numpy, including its SIMD rounding.

With OpenCV installed, encode and resize go through it where it gives the same bytes (:mod:`.opencv`).

EXIF orientation is ignored by ``decode_image``, as in MXNet's decoder; ``apply_exif_orientation`` does what
``cv2.imread`` (and so ``im2rec``) does with it. numpy only; torch is never imported here.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from openic.errors import ClientError, DataError
from openic.formats import opencv

ImageFormat = Literal["jpeg", "png", "other"]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
ENCODINGS = (".jpg", ".jpeg", ".png")

# Pillow's own MAX_IMAGE_PIXELS (1024**3 // 4 // 3), so we accept exactly the images Pillow opens without a
# DecompressionBombWarning: ~9459x9459, a 256 MiB RGB decode. A header can declare 65535x65535 in a few bytes,
# which would cost 12 GiB before the decoder notices the pixel data is missing.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_PIXELS_LIMIT = 2**40  # no decoder here can hold more; past this a "limit" is no limit at all
JPEG_MAX_SIDE = 65535  # the SOF header's 16-bit width and height
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 less DHT, JPG, DAC
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: markers without a length field

# libpng's rgb_to_gray with OpenCV's (0.299, 0.587): png_set_rgb_to_gray_fixed truncates each
# coefficient to 1/32768 units and gives blue the rest; each pixel is then truncated (>> 15).
_PNG_GRAY_R, _PNG_GRAY_G = 29900 * 32768 // 100000, 58700 * 32768 // 100000
_PNG_GRAY_B = 32768 - _PNG_GRAY_R - _PNG_GRAY_G


def image_format(data: bytes) -> ImageFormat:
    """``"jpeg"`` / ``"png"`` from the magic bytes, else ``"other"``."""
    if data[:3] == _JPEG_MAGIC:
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    return "other"


class ImageTooLargeError(DataError):
    """The header declares more pixels than allowed; raised before a single pixel is decoded."""


def declared_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's SOF or a PNG's IHDR header, decoding nothing; ``None`` if not found."""
    if data[:8] == _PNG_MAGIC:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack_from(">II", data, 16)
        return width, height
    if data[:3] != _JPEG_MAGIC:
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:  # walk the marker segments up to the first SOF (a few APPn/DQT segments come first)
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _JPEG_NO_LENGTH:
            pos += 2
        elif marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or SOS before any SOF: no size to read
            return None
        elif marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def check_image_size(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (width x height); ``None``: no limit.

    Raises:
        ImageTooLargeError: naming the declared size, the limit and how to raise it.
        ClientError: ``max_pixels`` is not a positive int (or ``None``).
    """
    if max_pixels is None:
        return
    check_max_pixels(max_pixels)
    size = declared_size(data)
    if size is not None:
        _check_pixels(*size, max_pixels)


def check_max_pixels(value: object, name: str = "max_pixels") -> int:
    """The one validator of a pixel limit (API argument, ``--max-image-pixels``, run option); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_PIXELS_LIMIT:
        raise ClientError(f"{name} must be a whole number of pixels (width x height) in 1..{MAX_IMAGE_PIXELS_LIMIT}, "
                          f"got {value!r}")
    return value


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image declares {width}x{height} pixels ({width * height:,}), more than the limit of "
            f"{max_pixels:,}; if it is genuine, raise the limit with --max-image-pixels (max_pixels=)"
        )


def decode_image(data: bytes, channels: int = 3, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG bytes to an ``HxWxC`` uint8 array, RGB for ``channels=3``, luma for ``channels=1``.

    Matches MXNet's ``imdecode`` (OpenCV ``IMREAD_COLOR`` / ``IMREAD_GRAYSCALE``) pixel for pixel, with two
    known differences: a JPEG that libjpeg can only decode with warnings (truncated, corrupt data) raises
    instead of yielding a partly grey image, so the data pipeline can skip and count it; and ``channels=1`` on a
    16-bit colour PNG may be 1 off, as libpng weights the 16-bit samples and Pillow gives us only 8 bits.

    ``max_pixels`` (width x height, ``None`` for no limit) is checked against the header before decoding, so a
    few bytes declaring a huge image cost nothing. Pillow keeps its own, higher limit for PNG (twice this default).

    Raises:
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        DataError: the bytes are not a JPEG/PNG image, or the decoder rejects them. Callers add the file or
            record the bytes came from.
    """
    if channels not in (1, 3):
        raise ClientError(f"channels must be 1 or 3, got {channels!r}")
    check_image_size(data, max_pixels)
    fmt = image_format(data)
    if fmt == "jpeg":
        return _decode_jpeg(data, channels, max_pixels)
    if fmt == "png":
        return _decode_png(data, channels, max_pixels)
    head = bytes(data[:8])
    raise DataError(f"not a JPEG/PNG image ({len(data)} bytes, starting {head!r})")


def _decode_jpeg(data: bytes, channels: int, max_pixels: int | None) -> np.ndarray:
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise DataError(f"cannot decode JPEG: {e}") from None
    _check_pixels(width, height, max_pixels)  # libjpeg's own reading of the header, in case ours found none
    try:
        if colorspace in ("CMYK", "YCCK"):
            cmyk = simplejpeg.decode_jpeg(data, colorspace="CMYK", fastdct=False, fastupsample=False)
            return _cmyk_to_rgb(cmyk) if channels == 3 else _rgb_to_gray_opencv(_cmyk_to_rgb(cmyk))
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB" if channels == 3 else "GRAY", fastdct=False, fastupsample=False
        )
    except ValueError as e:
        raise DataError(f"cannot decode JPEG: {e}") from None


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's ``icvCvt_CMYK2BGR_8u``: libjpeg's (Adobe-inverted) CMYK, ``c' = k - ((255 - c) * k >> 8)``."""
    c = cmyk.astype(np.int32)
    k = c[..., 3:4]
    return (k - (((255 - c[..., :3]) * k) >> 8)).astype(np.uint8)


def _rgb_to_gray_opencv(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point luma (R 4899, G 9617, B 1868 in 1/16384 units, rounded)."""
    x = rgb.astype(np.int32)
    y = (x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192) >> 14
    return y.astype(np.uint8)[..., None]


def _decode_png(data: bytes, channels: int, max_pixels: int | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(*im.size, max_pixels)  # Pillow's lazy open read the header only
            im.load()
            mode = im.mode
            if mode in ("P", "1"):
                im.info.pop("transparency", None)  # OpenCV ignores tRNS for 3-channel output
                mode = "RGB" if mode == "P" else "L"
                im = im.convert(mode)
            arr = np.asarray(im)
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError:
        raise DataError("cannot decode PNG: corrupt or truncated header") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode PNG: {e}") from None
    if mode.startswith("I"):  # 16-bit grayscale ("I;16", "I;16B", "I"): libpng's strip_16 keeps the high byte
        arr = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        mode = "L"
    if arr.ndim == 2:
        arr = arr[..., None]
    if mode in ("RGBA", "LA"):  # alpha dropped, not composited (png_set_strip_alpha)
        arr = arr[..., :-1]
    if arr.dtype != np.uint8 or arr.shape[2] not in (1, 3):
        raise DataError(f"cannot decode PNG: unsupported pixel layout (Pillow mode {mode!r}, shape {arr.shape})")
    if channels == 3:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    if arr.shape[2] == 1:
        return np.ascontiguousarray(arr)
    x = arr.astype(np.uint32)
    gray = (x[..., 0] * _PNG_GRAY_R + x[..., 1] * _PNG_GRAY_G + x[..., 2] * _PNG_GRAY_B) >> 15
    # libpng copies a pixel whose three channels are equal instead of weighting it.
    gray = np.where((x[..., 0] == x[..., 1]) & (x[..., 1] == x[..., 2]), x[..., 0], gray)
    return gray.astype(np.uint8)[..., None]


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG/PNG bytes; 1 when there is none or it cannot be read."""
    fmt = image_format(data)
    # cheap look for the EXIF block first: most images have none, and opening them with Pillow costs more
    if fmt == "other" or (b"Exif\x00\x00" not in data[:65536] if fmt == "jpeg" else b"eXIf" not in data):
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a decoded image upright as OpenCV's ``imread``/``imdecode`` do by default.

    MXNet's own decoder ignores EXIF, but ``im2rec`` reads files with ``cv2.imread`` (opencv-python 4.x), which
    applies it: an EXIF-rotated photo is stored rotated in the ``.rec``. This reproduces that step.
    """
    if orientation in (5, 6, 7, 8):
        img = img.swapaxes(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    for axis in flips:
        img = np.flip(img, axis=axis)
    return np.ascontiguousarray(img)


def encode_image(rgb: np.ndarray, encoding: str = ".jpg", quality: int = 95) -> bytes:
    """Encode like MXNet's ``pack_img`` (``cv2.imencode`` on the BGR image), byte for byte.

    Args:
        rgb: ``HxWx3`` RGB, or ``HxW``/``HxWx1`` grayscale, uint8.
        encoding: ``.jpg``/``.jpeg`` or ``.png`` (case-insensitive, as MXNet).
        quality: JPEG quality, or PNG zlib level for ``.png``; clamped to 0..100 / 0..9 as OpenCV does
            (im2rec's default 95 with ``--encoding .png`` means level 9).
    """
    enc = encoding.lower()
    if enc not in ENCODINGS:
        raise ClientError(f"unsupported encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    arr = _check_encodable(rgb)
    enc = ".png" if enc == ".png" else ".jpg"
    quality = min(max(int(quality), 0), 9 if enc == ".png" else 100)
    fast = opencv.encode(arr, enc, quality, _encode_reference)
    return fast if fast is not None else _encode_reference(arr, enc, quality)


def _encode_reference(arr: np.ndarray, enc: str, quality: int) -> bytes:
    """The OpenCV-free encoders (Pillow's libjpeg-turbo, libpng re-done), ``quality`` already clamped."""
    if enc == ".png":
        return _encode_png_libpng(arr, quality)
    buf = io.BytesIO()
    Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


_IDAT_CHUNK = 8192  # libpng's PNG_ZBUF_SIZE: OpenCV's PNGs split the zlib stream into IDAT chunks this long


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _encode_png_libpng(arr: np.ndarray, level: int) -> bytes:
    """The PNG libpng writes for OpenCV: per-row adaptive filter, then deflate as libpng drives zlib (window
    shrunk for small images, CMF header optimised, IDAT chunks of 8 KiB)."""
    height, width = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    raw = _png_filter_rows(arr.reshape(height, width * channels), channels).tobytes()
    window_bits = 15
    if len(raw) <= 16384:  # png_deflate_claim: smallest window that still sees the whole image (+262 lookahead)
        while len(raw) + 262 <= 1 << (window_bits - 1):
            window_bits -= 1
    co = zlib.compressobj(level, zlib.DEFLATED, window_bits, 8, zlib.Z_DEFAULT_STRATEGY)
    stream = bytearray(co.compress(raw) + co.flush())
    _optimize_cmf(stream, len(raw))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    idat = b"".join(_png_chunk(b"IDAT", bytes(stream[i : i + _IDAT_CHUNK])) for i in range(0, len(stream), _IDAT_CHUNK))
    return _PNG_MAGIC + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


def _png_filter_rows(rows: np.ndarray, bpp: int) -> np.ndarray:
    """libpng's default filter choice: per row, of None/Sub/Up/Average/Paeth (those libpng allows for the image's
    size) the one whose bytes, read as signed, have the smallest absolute sum (first wins ties). Returns rows
    prefixed with their filter byte."""
    cur = rows.astype(np.int16)
    prev = np.zeros_like(cur)
    prev[1:] = cur[:-1]
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    up_left = np.zeros_like(cur)
    up_left[:, bpp:] = prev[:, :-bpp]
    p = left + prev - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
    candidates = np.stack([cur, cur - left, cur - prev, cur - ((left + prev) >> 1), cur - paeth]).astype(np.uint8)
    cost = np.minimum(candidates, 256 - candidates.astype(np.int32)).sum(axis=2, dtype=np.int64)
    # png_write_start_row: one row leaves no use for Up/Average/Paeth, one pixel a row none for Sub/Average/Paeth
    allowed = np.ones(5, bool)
    if rows.shape[0] == 1:
        allowed[[2, 3, 4]] = False
    if rows.shape[1] == bpp:
        allowed[[1, 3, 4]] = False
    cost[~allowed] = np.iinfo(np.int64).max
    choice = np.argmin(cost, axis=0)
    chosen = candidates[choice, np.arange(rows.shape[0])]
    return np.concatenate([choice.astype(np.uint8)[:, None], chosen], axis=1)


def _optimize_cmf(stream: bytearray, data_size: int) -> None:
    """libpng's ``optimize_cmf``: advertise the smallest zlib window that covers ``data_size``."""
    cmf = stream[0]
    if data_size > 16384 or (cmf & 0x0F) != 8 or (cmf & 0xF0) > 0x70:
        return
    cinfo = cmf >> 4
    half = 1 << (cinfo + 7)
    if data_size > half:
        return
    while True:
        half >>= 1
        cinfo -= 1
        if not (cinfo > 0 and data_size <= half):
            break
    cmf = (cmf & 0x0F) | (cinfo << 4)
    flg = stream[1] & 0xE0
    flg += 0x1F - ((cmf << 8) + flg) % 0x1F
    stream[0], stream[1] = cmf, flg


def _check_encodable(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ClientError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.size == 0:
        raise ClientError(f"image must be HxWx3, HxWx1 or HxW and non-empty, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


# the resize lives in .resize; these names stay importable from here
from openic.formats.resize import (  # noqa: E402
    _resize_reference,
    resize_bilinear,
    resize_shorter,
    resized_hw,
)

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ENCODINGS", "apply_exif_orientation", "check_image_size",
           "check_max_pixels", "decode_image", "declared_size", "encode_image", "exif_orientation", "image_format",
           "resize_bilinear", "resize_shorter", "resized_hw", "_resize_reference"]
