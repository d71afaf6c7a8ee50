"""Decode/encode/resize against what MXNet 1.9.1 and opencv-python 4.11 produce.

Golden md5s below were made with opencv-python 4.11.0 (the version MXNet's im2rec ran with for the fixtures):
input ``np.random.RandomState(h * 1000 + w * 10 + cn).randint(0, 256, (h, w, cn)).astype(np.uint8)`` (legacy
RandomState streams are stable across numpy versions), then ``cv2.resize(img, (tw, th))`` or
``cv2.imencode('.png', img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level])``.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from _shared import EXPECTED, FIXTURES, FULL_SET, needs_fixtures
from PIL import Image, ImageOps

from openic.errors import ClientError, DataError
from openic.formats.images import (
    apply_exif_orientation,
    decode_image,
    encode_image,
    exif_orientation,
    image_format,
    resize_bilinear,
    resize_shorter,
)
from openic.formats.recordio import RecordReader, unpack


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def image_records() -> list[tuple[str, bytes, dict]]:
    """(file, payload, expected) for every image record in the fixtures."""
    if not EXPECTED.is_file():
        return []
    out = []
    for rec in json.loads(EXPECTED.read_text())["recs"]:
        if rec["file"].endswith("plain_sequential.rec"):
            continue
        with RecordReader(FIXTURES / rec["file"]) as reader:
            for (data, _), exp in zip(reader.scan(), rec["records"], strict=True):
                out.append((rec["file"], unpack(data)[1], exp))
    return out


@pytest.fixture(scope="module")
def records():
    return image_records()


# --------------------------------------------------------------------------- decode vs MXNet


@needs_fixtures
def test_decode_every_fixture_record(records):
    """pix_md5 (RGB) and gray_sum (channels=1) of every image record equal MXNet's imdecode."""
    images = 0
    for name, payload, exp in records:
        assert image_format(payload) == exp["format"], (name, exp["offset"])
        if "pix_md5" not in exp:
            with pytest.raises(DataError):
                decode_image(payload)
            continue
        rgb = decode_image(payload)
        assert list(rgb.shape) == exp["shape"] and rgb.dtype == np.uint8
        assert md5(rgb.tobytes()) == exp["pix_md5"], (name, exp["offset"])
        assert rgb.reshape(-1, 3).sum(axis=0).tolist() == exp["csum"]
        gray = decode_image(payload, channels=1)
        assert gray.shape == (*rgb.shape[:2], 1)
        assert int(gray.sum()) == exp["gray_sum"], (name, exp["offset"])
        images += 1
    assert images > (2000 if FULL_SET else 900)  # the subset has no rec/digits_train.rec
    assert any(exp.get("format") == "png" and "pix_md5" in exp for _, _, exp in records)


@needs_fixtures
@pytest.mark.parametrize("rec_file", ["rec/digits_val.rec", "rec_passthrough/digits_val.rec"])
def test_decode_equals_mxnet_arrays(rec_file):
    arrays = json.loads(EXPECTED.read_text())["decoded_arrays"]
    want = np.load(FIXTURES / arrays[rec_file])
    with RecordReader(FIXTURES / rec_file) as reader:
        got = [decode_image(unpack(d)[1]) for d, _ in list(reader.scan())[: len(want)]]
    np.testing.assert_array_equal(np.stack(got), want)


# --------------------------------------------------------------------------- PNG variants (libpng semantics)


def make_png(samples: np.ndarray, color_type: int, bit_depth: int, palette=None, trns: bytes | None = None) -> bytes:
    """A PNG written by hand, so every colour type / bit depth can be made (Pillow cannot write most)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    h, w = samples.shape[:2]
    flat = samples.reshape(h, -1).astype(np.int64)
    rows = []
    for row in flat:
        if bit_depth == 16:
            raw = row.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw = row.astype(np.uint8).tobytes()
        else:
            per = 8 // bit_depth
            row = np.concatenate([row, np.zeros(-len(row) % per, np.int64)]).reshape(-1, per)
            raw = (row << (8 - bit_depth * (np.arange(per) + 1))).sum(axis=1).astype(np.uint8).tobytes()
        rows.append(b"\0" + raw)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        png += chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        png += chunk(b"tRNS", trns)
    return png + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


RNG = np.random.RandomState(1)
H, W = 5, 7


def gray_from_rgb_libpng(rgb: np.ndarray) -> np.ndarray:
    """libpng rgb_to_gray with OpenCV's (0.299, 0.587): coefficients 9797/19234/3737 of 32768, truncated."""
    x = rgb.astype(np.int64)
    y = (x[..., 0] * 9797 + x[..., 1] * 19234 + x[..., 2] * 3737) >> 15
    return np.where((x[..., 0] == x[..., 1]) & (x[..., 1] == x[..., 2]), x[..., 0], y).astype(np.uint8)


def png_cases():
    """(name, png bytes, expected RGB) per colour type; expectation written from the PNG spec + OpenCV's flags."""
    g8 = RNG.randint(0, 256, (H, W))
    yield "gray8", make_png(g8, 0, 8), np.repeat(g8[..., None], 3, 2)
    for bits, scale in ((1, 255), (2, 85), (4, 17)):
        g = RNG.randint(0, 2**bits, (H, W))
        yield f"gray{bits}", make_png(g, 0, bits), np.repeat((g * scale)[..., None], 3, 2)
    g16 = RNG.randint(0, 65536, (H, W))
    yield "gray16", make_png(g16, 0, 16), np.repeat((g16 >> 8)[..., None], 3, 2)
    yield "gray8+tRNS", make_png(g8, 0, 8, trns=struct.pack(">H", int(g8[0, 0]))), np.repeat(g8[..., None], 3, 2)
    rgb16 = RNG.randint(0, 65536, (H, W, 3))
    yield "rgb16", make_png(rgb16, 2, 16), rgb16 >> 8
    pal = RNG.randint(0, 256, (16, 3))
    idx = RNG.randint(0, 16, (H, W))
    yield "palette4", make_png(idx, 3, 4, palette=pal), pal[idx]
    yield "palette8+tRNS", make_png(idx, 3, 8, palette=pal, trns=bytes(range(0, 160, 10))), pal[idx]
    la = RNG.randint(0, 256, (H, W, 2))
    yield "la8", make_png(la, 4, 8), np.repeat(la[..., :1], 3, 2)
    la16 = RNG.randint(0, 65536, (H, W, 2))
    yield "la16", make_png(la16, 4, 16), np.repeat(la16[..., :1] >> 8, 3, 2)
    rgba = RNG.randint(0, 256, (H, W, 4))
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its colour: alpha is dropped, not composited
    yield "rgba8", make_png(rgba, 6, 8), rgba[..., :3]
    rgba16 = RNG.randint(0, 65536, (H, W, 4))
    yield "rgba16", make_png(rgba16, 6, 16), rgba16[..., :3] >> 8


PNG_CASES = list(png_cases())


@pytest.mark.parametrize(("name", "png", "want"), PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_png_variants(name, png, want):
    rgb = decode_image(png)
    np.testing.assert_array_equal(rgb, want.astype(np.uint8))
    assert rgb.flags.c_contiguous
    gray = decode_image(png, channels=1)[..., 0]
    if name.startswith(("gray", "la")):
        np.testing.assert_array_equal(gray, want[..., 0].astype(np.uint8))
    elif not name.endswith("16"):  # 16-bit colour: libpng weights 16-bit samples; we may be off by 1
        np.testing.assert_array_equal(gray, gray_from_rgb_libpng(want))
    else:
        assert np.abs(gray.astype(int) - gray_from_rgb_libpng(want)).max() <= 1


def test_png_rgb8_and_gray_weights():
    rgb = RNG.randint(0, 256, (H, W, 3))
    rgb[0, 0] = (200, 200, 200)
    png = make_png(rgb, 2, 8)
    np.testing.assert_array_equal(decode_image(png), rgb.astype(np.uint8))
    np.testing.assert_array_equal(decode_image(png, channels=1)[..., 0], gray_from_rgb_libpng(rgb))


# --------------------------------------------------------------------------- JPEG specifics


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_exif_orientation_is_ignored():
    rgb = RNG.randint(0, 256, (16, 40, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    rotated = jpeg_bytes(rgb, exif=exif.tobytes())
    assert b"Exif" in rotated
    np.testing.assert_array_equal(decode_image(rotated), decode_image(jpeg_bytes(rgb)))
    assert decode_image(rotated).shape == (16, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_exif_orientation_like_imread(orientation):
    """What cv2.imread does with EXIF (and so MXNet's im2rec); checked against Pillow's exif_transpose on a PNG."""
    rgb = RNG.randint(0, 256, (6, 10, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", exif=exif.tobytes())
    data = buf.getvalue()
    assert exif_orientation(data) == orientation
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(apply_exif_orientation(decode_image(data), orientation), upright)
    gray = apply_exif_orientation(decode_image(data, channels=1), orientation)
    assert gray.shape == (*upright.shape[:2], 1)
    assert exif_orientation(jpeg_bytes(rgb, exif=exif.tobytes())) == orientation


def test_exif_orientation_absent():
    rgb = RNG.randint(0, 256, (6, 10, 3)).astype(np.uint8)
    assert exif_orientation(jpeg_bytes(rgb)) == 1
    assert exif_orientation(encode_image(rgb, ".png")) == 1
    assert exif_orientation(b"not an image") == 1


def test_grayscale_and_cmyk_jpeg():
    gray = np.add.outer(np.arange(24) * 5, np.arange(40) * 3).clip(0, 255).astype(np.uint8)
    data = jpeg_bytes(gray)
    one = decode_image(data, channels=1)
    three = decode_image(data)
    assert one.shape == (24, 40, 1) and three.shape == (24, 40, 3)
    np.testing.assert_array_equal(three, np.repeat(one, 3, axis=2))
    # CMYK: OpenCV's c' = k - ((255 - c) * k >> 8) on libjpeg's output (a solid colour survives JPEG exactly)
    cmyk = Image.new("CMYK", (16, 16), (10, 200, 30, 40))
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=100)
    got = decode_image(buf.getvalue())
    assert got.shape == (16, 16, 3)
    assert np.abs(got.astype(int) - got[0, 0].astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a JPEG/PNG image"),
        (b"hello world", "not a JPEG/PNG image"),
        (b"GIF89a" + b"\0" * 20, "not a JPEG/PNG image"),
        (b"\xff\xd8\xfftruncated", "cannot decode JPEG"),
        (b"\x89PNG\r\n\x1a\n", "cannot decode PNG"),
    ],
)
def test_undecodable_bytes(data, message):
    with pytest.raises(DataError, match=message):
        decode_image(data)


def test_truncated_images():
    rgb = RNG.randint(0, 256, (32, 32, 3)).astype(np.uint8)
    jpg = jpeg_bytes(rgb)
    png = encode_image(rgb, ".png")
    with pytest.raises(DataError, match="cannot decode JPEG"):
        decode_image(jpg[: len(jpg) - 100])
    with pytest.raises(DataError, match="cannot decode PNG"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(ClientError, match="channels must be 1 or 3"):
        decode_image(jpg, channels=4)


# --------------------------------------------------------------------------- encode vs cv2.imencode


@needs_fixtures
def test_jpeg_reencode_is_byte_identical_to_im2rec(digits_images):
    """im2rec --quality 95 decoded each source image and re-encoded it with cv2.imencode: same bytes here."""
    lst = FIXTURES / "rec" / "digits_val.lst"
    paths = {int(line.split("\t")[0]): line.rstrip("\n").split("\t")[-1] for line in lst.read_text().splitlines()}
    with RecordReader(FIXTURES / "rec" / "digits_val.rec") as reader:
        for data, _ in reader.scan():
            header, payload = unpack(data)
            source = (digits_images / paths[header.id]).read_bytes()
            assert encode_image(decode_image(source), ".jpg", 95) == payload, paths[header.id]


PNG_GOLDEN = [  # (h, w, cn, level, md5 of cv2.imencode('.png', bgr, [IMWRITE_PNG_COMPRESSION, level]))
    (5, 7, 1, 9, "929ccbcb6626546937e5b975835c0788"),
    (24, 40, 3, 95, "f0732377134398221c9357410c855203"),
    (24, 40, 3, 1, "bc3bfe0c415850fd9fcae7de5c0f1d64"),
    (120, 90, 3, 6, "cec66e14645b823cea69c731551127b1"),
    (64, 64, 3, 0, "7a325822df311589ab50e6afbedf3d22"),
]


def golden_input(h: int, w: int, cn: int) -> np.ndarray:
    img = np.random.RandomState(h * 1000 + w * 10 + cn).randint(0, 256, size=(h, w, cn)).astype(np.uint8)
    return img[..., 0] if cn == 1 else img


@pytest.mark.parametrize(("h", "w", "cn", "level", "want"), PNG_GOLDEN)
def test_png_encode_is_byte_identical_to_opencv(h, w, cn, level, want):
    img = golden_input(h, w, cn)
    data = encode_image(img, ".png", level)
    assert md5(data) == want
    np.testing.assert_array_equal(decode_image(data)[..., 0] if cn == 1 else decode_image(data), img)


@pytest.mark.parametrize(
    ("level", "want"), [(9, "cbb88c0bbfecee5e02f9c4cb5845d16f"), (1, "d7ecf46c694e6b5a691d11b77e918de9")]
)
def test_png_encode_compressible_image_matches_opencv(level, want):
    """A gradient with a little noise: real deflate work, a 32 KiB window and several 8 KiB IDAT chunks."""
    yy, xx = np.mgrid[0:150, 0:130]
    img = np.stack([(yy * 3 + xx * 5) % 256, (xx * xx) % 256, (yy * 7 + xx // 3) % 256], -1)
    img = (img + np.random.RandomState(7).randint(0, 4, img.shape)).clip(0, 255).astype(np.uint8)
    assert md5(encode_image(img, ".png", level)) == want


def test_encode_round_trips_and_errors():
    rgb = RNG.randint(0, 256, (9, 11, 3)).astype(np.uint8)
    for enc in (".png", ".PNG"):
        np.testing.assert_array_equal(decode_image(encode_image(rgb, enc, 3)), rgb)
    jpg = encode_image(rgb, ".JPEG", 100)
    assert image_format(jpg) == "jpeg" and decode_image(jpg).shape == (9, 11, 3)
    gray = rgb[..., 0]
    assert decode_image(encode_image(gray[..., None], ".png"), channels=1)[..., 0].tolist() == gray.tolist()
    assert encode_image(rgb, ".jpg", 500) == encode_image(rgb, ".jpg", 100)  # clamped as OpenCV does
    assert encode_image(rgb, ".png", 95) == encode_image(rgb, ".png", 9)
    with pytest.raises(ClientError, match="unsupported encoding '.bmp'"):
        encode_image(rgb, ".bmp")
    with pytest.raises(ClientError, match="must be uint8"):
        encode_image(rgb.astype(np.float32))
    with pytest.raises(ClientError, match="HxWx3"):
        encode_image(np.zeros((4, 4, 4), np.uint8))


# --------------------------------------------------------------------------- resize vs cv2.resize


RESIZE_GOLDEN = [  # (h, w, cn, th, tw, md5 of cv2.resize(img, (tw, th)))
    (1, 5, 1, 28, 28, "7edba0aa0d6a542d3329f93bba9b1a35"),
    (5, 1, 3, 13, 7, "24a1b1722c687b9b6ac37f96e88fe6a6"),
    (7, 9, 3, 16, 16, "ce0e05bee87781432fdbaf0ae9c71093"),
    (31, 17, 3, 28, 28, "d22897d6007a017a5972f9f26a54079a"),
    (32, 32, 3, 224, 224, "f1c2696143bc26e71986e13ed6d890b6"),
    (33, 65, 4, 40, 50, "dccb2e57001b32b53090528e217d8d86"),
    (64, 48, 3, 32, 24, "c5f1fc13986c8d8440a5439667a56f29"),
    (64, 48, 3, 31, 23, "782e78ef988e56f35a8c813d81b931a6"),
    (100, 3, 1, 5, 300, "a946bb68081df06ab4bc65ed073bdaba"),
    (3, 100, 3, 99, 101, "647b4a355534c6653dcfd6aabf9f7d49"),
    (480, 640, 3, 224, 298, "2153f99242bc6487d93147118d46a422"),
    (17, 5, 3, 100, 29, "4a425bd2306ac126baf687cb9a7bdc86"),
    (2, 3, 3, 64, 64, "56af4c4051bf5ae8260de32dcbfe4404"),
    (32, 32, 1, 28, 28, "6861ab7550c49f9eec3a2d1024efa5bb"),
]


@pytest.mark.parametrize(("h", "w", "cn", "th", "tw", "want"), RESIZE_GOLDEN)
def test_resize_bilinear_matches_opencv(h, w, cn, th, tw, want):
    img = np.random.RandomState(h * 1000 + w * 10 + cn).randint(0, 256, size=(h, w, cn)).astype(np.uint8)
    out = resize_bilinear(img, th, tw)
    assert out.shape == (th, tw, cn) and out.dtype == np.uint8
    assert md5(out.tobytes()) == want


def test_resize_properties():
    img = RNG.randint(0, 256, (6, 10, 3)).astype(np.uint8)
    np.testing.assert_array_equal(resize_bilinear(img, 6, 10), img)
    half = resize_bilinear(img, 3, 5)  # exact 2x shrink: OpenCV's 2x2 mean, rounded half up
    block = img.reshape(3, 2, 5, 2, 3).astype(int).sum(axis=(1, 3))
    np.testing.assert_array_equal(half, (block + 2) // 4)
    flat = np.full((7, 5, 3), 77, np.uint8)
    assert (resize_bilinear(flat, 23, 2) == 77).all()
    assert resize_bilinear(img[..., 0], 9, 4).shape == (9, 4)
    with pytest.raises(ClientError, match="must be positive"):
        resize_bilinear(img, 0, 4)
    with pytest.raises(ClientError, match="uint8"):
        resize_bilinear(img.astype(np.float32), 4, 4)


@pytest.mark.parametrize(
    ("shape", "size", "want"),
    [((480, 640), 256, (256, 341)), ((640, 480), 256, (341, 256)), ((32, 32), 28, (28, 28)), ((17, 5), 32, (108, 32))],
)
def test_resize_shorter_follows_im2rec(shape, size, want):
    img = np.zeros((*shape, 3), np.uint8)
    assert resize_shorter(img, size).shape == (*want, 3)
    with pytest.raises(ClientError):
        resize_shorter(img, 0)
