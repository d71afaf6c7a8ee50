"""``.lst`` → ``.rec``/``.idx`` (im2rec's packing mode), following MXNet 1.9.1's ``tools/im2rec.py``.

API (``openic im2rec`` is a thin shell over it):

* listing (``--list``) is :mod:`openic.prep.im2rec_list`; the class sidecar is :mod:`openic.formats.lst`'s.
* ``pack_lst(lst_path, root, out_prefix, PackOptions) -> PackResult``: one list → ``out_prefix.rec``/``.idx``.
* ``pack_prefix(prefix, root, PackOptions) -> list[PackResult]``: MXNet's packing mode, every ``.lst`` that
  :func:`find_lst_files` matches (absolute path starts with ``prefix``; all of them if it is a folder).

Packing, as MXNet: record id and ``.idx`` key = the ``.lst`` index, records in ``.lst`` order at any
``num_thread``; decode (RGB, or luma with ``color=0``), centre square crop, shorter side → ``resize``
(OpenCV's bilinear and integer arithmetic), re-encode with ``encoding``/``quality`` (byte-identical to
``cv2.imencode``), or store the file bytes with ``pass_through``. Header label: the first column, or all
columns (``flag`` = count) with ``pack_label`` and two or more columns.

Differences on purpose: MXNet prints and skips a malformed line, a missing or undecodable image, and writes
empty lists for an empty folder. Here a malformed line or a path leaving ``root`` raises ``DataError`` before
anything is written; each unreadable image (or, with ``pass_through``, a file that is not JPEG/PNG) is logged
with ``file:line`` and path, the whole list is processed so one run reports them all, then ``DataError`` is
raised and no ``.rec`` is left behind, unless ``skip_bad`` (``--skip-bad``) packs the rest and lists the skips
in :class:`PackResult`. Ratios summing past 1 (unless train_ratio is 1, when MXNet ignores test_ratio and so do
we, with a warning), an empty folder, ``chunks`` that would leave a list empty and ``color=-1`` (alpha, 16-bit:
unusable for training) are ``ClientError``. An image declaring more than ``max_image_pixels`` (or resized past
it) is skipped like an unreadable one, before it is decoded. Outputs appear atomically (hidden ``.partial-PID``
files + rename), and the ``.rec`` is locked while it is packed, so a second packer of it fails at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from openic.errors import ClientError, DataError
from openic.forking import inherited, lookup
from openic.formats.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    JPEG_MAX_SIDE,
    ImageTooLargeError,
    apply_exif_orientation,
    check_image_size,
    check_max_pixels,
    decode_image,
    encode_image,
    exif_orientation,
    image_format,
    resize_shorter,
    resized_hw,
)
from openic.formats.lst import LstEntry, checked_relative_path, read_lst_with_lines
from openic.formats.recordio import IRHeader, RecordWriter, pack

log = logging.getLogger(__name__)

_PASS_THROUGH_FORMATS = ("jpeg", "png")
MAX_RESIZE = JPEG_MAX_SIDE  # no JPEG can hold a longer side
MAX_THREADS = 256


@dataclass(frozen=True)
class PackOptions:
    """``im2rec`` packing options (MXNet's names and defaults), plus ``skip_bad``, ``progress`` and
    ``max_image_pixels`` (images declaring more pixels, or resized to more, are skipped as unreadable)."""

    pass_through: bool = False
    resize: int = 0
    center_crop: bool = False
    quality: int = 95
    num_thread: int = 1
    color: int = 1
    encoding: str = ".jpg"
    pack_label: bool = False
    skip_bad: bool = False
    progress: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if not 0 <= self.resize <= MAX_RESIZE:
            raise ClientError(f"resize must be 0 (keep the size) or a shorter side of 1..{MAX_RESIZE} pixels, got "
                              f"{self.resize}")
        if not 0 <= self.quality <= 100:
            raise ClientError(f"quality must be in 0..100 (JPEG quality; PNG compression 0..9), got {self.quality}")
        if not 1 <= self.num_thread <= MAX_THREADS:
            raise ClientError(f"num_thread must be a positive int, at most {MAX_THREADS}, got {self.num_thread}")
        check_max_pixels(self.max_image_pixels, "max_image_pixels")
        if self.color not in (0, 1):
            raise ClientError(
                f"color {self.color} is not supported: use 1 (3-channel colour) or 0 (grayscale); -1 (keep alpha and "
                f"bit depth) gives images the training pipeline cannot read"
            )
        if self.encoding not in (".jpg", ".png"):
            raise ClientError(f"encoding {self.encoding!r} is not one of .jpg, .png")


@dataclass(frozen=True)
class Skip:
    """An image left out of a ``.rec``: where it was listed (``file:line``), its path, and why."""

    source: str
    path: str
    reason: str


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_lst` wrote."""

    lst_path: Path
    rec_path: Path
    idx_path: Path
    written: int
    skipped: tuple[Skip, ...] = ()


# --------------------------------------------------------------------------- packing


def find_lst_files(prefix: str | os.PathLike[str]) -> list[Path]:
    """MXNet's rule: every ``.lst`` in the prefix's folder whose absolute path starts with the prefix, sorted.

    A folder as prefix selects every ``.lst`` in it; ``data/digits`` selects ``data/digits_train.lst`` and
    ``data/digits_val.lst`` (and, as in MXNet, ``data/digits2.lst``: the match is on the string).
    """
    prefix_s = os.path.abspath(prefix)
    folder = prefix_s if os.path.isdir(prefix_s) else os.path.dirname(prefix_s)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} of prefix {os.fspath(prefix)!r} does not exist")
    names = sorted(os.listdir(folder))
    return [
        Path(folder, n)
        for n in names
        if n.endswith(".lst")
        and os.path.join(folder, n).startswith(prefix_s)
        and os.path.isfile(os.path.join(folder, n))
    ]


def pack_prefix(
    prefix: str | os.PathLike[str], root: str | os.PathLike[str], options: PackOptions = PackOptions()
) -> list[PackResult]:
    """Pack every ``.lst`` matching ``prefix`` (see :func:`find_lst_files`) into ``.rec``/``.idx`` beside it."""
    lsts = find_lst_files(prefix)
    if not lsts:
        raise ClientError(f"no .lst file matches the prefix {os.path.abspath(prefix)!r}; create one with --list")
    return [pack_lst(lst, root, lst.with_suffix(""), options) for lst in lsts]


@dataclass(frozen=True)
class _Job:
    source: str  # file:line
    entry: LstEntry
    path: str  # root joined with the checked relative path (strings: pathlib costs more than the encode here)
    header: IRHeader


def _jobs(lst_path: Path, root: str | os.PathLike[str], pack_label: bool) -> list[_Job]:
    """Every line of the list, checked (format and paths) before any image is read."""
    jobs = []
    where, top = str(lst_path), os.fspath(root)
    for lineno, entry in read_lst_with_lines(lst_path):
        source = f"{where}:{lineno}"
        path = os.path.join(top, checked_relative_path(root, entry.path, source=source))
        label = entry.labels if pack_label and len(entry.labels) > 1 else entry.labels[0]
        jobs.append(_Job(source, entry, path, IRHeader(0, label, entry.index, 0)))
    return jobs


def pack_lst(
    lst_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    out_prefix: str | os.PathLike[str],
    options: PackOptions = PackOptions(),
) -> PackResult:
    """Pack the images of one ``.lst`` into ``out_prefix.rec`` + ``out_prefix.idx`` (see the module docstring).

    Raises:
        DataError: for a malformed list, a path leaving ``root``, or (without ``skip_bad``) any unreadable image;
            nothing is written then. Also when no image at all could be packed.
    """
    lst = Path(lst_path)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image root folder not found: {root} (the paths in {lst} are relative to it)")
    rec_path, idx_path = Path(f"{out_prefix}.rec"), Path(f"{out_prefix}.idx")
    jobs = _jobs(lst, root, options.pack_label)
    log.info("Creating %s from %s (%d images)", rec_path, lst, len(jobs))
    skipped: list[Skip] = []
    bar = tqdm(total=len(jobs), desc=lst.name, unit="img", file=sys.stderr, disable=not options.progress)
    with bar, RecordWriter(rec_path, idx_path) as writer:
        for job, result in _results(jobs, options):
            bar.update()
            if isinstance(result, Skip):
                log.warning("%s: skipping %s: %s", result.source, result.path, result.reason)
                skipped.append(result)
            else:
                writer.write(result, key=job.entry.index)
        _check_skips(lst, len(jobs), skipped, options.skip_bad)
    if skipped:
        log.warning("%s: skipped %d of %d images", lst, len(skipped), len(jobs))
    return PackResult(lst, rec_path, idx_path, len(jobs) - len(skipped), tuple(skipped))


def _check_skips(lst: Path, total: int, skipped: list[Skip], skip_bad: bool) -> None:
    """Raise (inside the writer's ``with``, so the partial output is deleted) when the skips are not allowed."""
    if not skipped:
        return
    first = "; ".join(f"{s.source}: {s.path}: {s.reason}" for s in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    if len(skipped) == total:
        raise DataError(f"{lst}: none of the {total} images could be read: {first}{more}")
    if not skip_bad:
        raise DataError(
            f"{lst}: {len(skipped)} of {total} images could not be read, so no .rec was written: {first}{more}. "
            f"Fix the list or the files, or pass --skip-bad (skip_bad=True) to pack the others"
        )


def _encode_range(token: int, start: int, stop: int, options: PackOptions) -> list[bytes | Skip]:
    jobs: list[_Job] = lookup(token)  # type: ignore[assignment] - inherited at fork: only indices cross the pipe
    return [_encode(job, options) for job in jobs[start:stop]]


def _pool(workers: int) -> Executor:
    """Worker processes where ``fork`` exists (decode, encode and the Python between them run truly in
    parallel, as MXNet's im2rec does with multiprocessing), else threads (the codecs release the GIL)."""
    import multiprocessing

    if "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers, thread_name_prefix="im2rec")


def _results(jobs: list[_Job], options: PackOptions) -> Iterator[tuple[_Job, bytes | Skip]]:
    """Encoded records (or skips) in list order; ``num_thread > 1`` encodes ahead in a bounded window of workers.

    Work goes out in chunks: one small image takes well under a millisecond, so handing images over one by one
    would cost more in hand-offs than the workers gain.
    """
    if options.num_thread == 1:
        for job in jobs:
            yield job, _encode(job, options)
        return
    size = 64
    ranges = [(i, min(i + size, len(jobs))) for i in range(0, len(jobs), size)]
    window = 2 * options.num_thread  # enough to keep the workers busy without holding the whole data set
    pending: deque[tuple[int, int, Future[list[bytes | Skip]]]] = deque()
    with inherited(jobs) as token, _pool(options.num_thread) as pool:
        try:
            for start, stop in ranges:
                pending.append((start, stop, pool.submit(_encode_range, token, start, stop, options)))
                if len(pending) >= window:
                    a, b, fut = pending.popleft()
                    yield from zip(jobs[a:b], fut.result(), strict=True)
            while pending:
                a, b, fut = pending.popleft()
                yield from zip(jobs[a:b], fut.result(), strict=True)
        finally:
            for _, _, fut in pending:
                fut.cancel()


def _encode(job: _Job, options: PackOptions) -> bytes | Skip:
    """One record, or a :class:`Skip` when the file cannot be read or decoded, or is too large (other errors
    propagate)."""
    path = job.path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return Skip(job.source, path, f"cannot read the file ({e.strerror or e})")
    if options.pass_through:
        fmt = image_format(data)
        if fmt not in _PASS_THROUGH_FORMATS:
            return Skip(job.source, path, f"not a JPEG or PNG file (detected: {fmt})")
        try:  # training would refuse it too, so say so now
            check_image_size(data, options.max_image_pixels)
        except ImageTooLargeError as e:
            return Skip(job.source, path, str(e))
        return pack(job.header, data)
    try:
        img = decode_image(data, channels=3 if options.color == 1 else 1, max_pixels=options.max_image_pixels)
    except DataError as e:
        return Skip(job.source, path, f"cannot decode the image ({e})")
    # MXNet's im2rec reads files with cv2.imread, which turns EXIF-rotated photos upright before packing
    img = apply_exif_orientation(img, exif_orientation(data))
    try:
        img = _transform(img, options)
    except ImageTooLargeError as e:
        return Skip(job.source, path, str(e))
    return pack(job.header, encode_image(img, options.encoding, options.quality))


def _transform(img: np.ndarray, options: PackOptions) -> np.ndarray:
    """MXNet's ``--center-crop`` then ``--resize`` (shorter side, integer arithmetic), on an HxWxC array.

    Raises:
        ImageTooLargeError: before resizing, when the result would exceed ``max_image_pixels`` or (for JPEG
            output) the 65535-pixel side of a JPEG.
    """
    h, w = img.shape[:2]
    if options.center_crop:
        if h > w:
            margin = (h - w) // 2
            img = img[margin : margin + w]
        else:
            margin = (w - h) // 2
            img = img[:, margin : margin + h]
    rh, rw = resized_hw(img.shape[:2], options.resize or None)
    if rh * rw > options.max_image_pixels:
        raise ImageTooLargeError(f"resizing to {rw}x{rh} ({rw * rh:,} pixels) would exceed the limit of "
                                 f"{options.max_image_pixels:,}; lower --resize or raise --max-image-pixels")
    if options.encoding == ".jpg" and max(rh, rw) > JPEG_MAX_SIDE:
        raise ImageTooLargeError(f"a {rw}x{rh} image cannot be stored as JPEG (at most {JPEG_MAX_SIDE} pixels a "
                                 f"side); lower --resize or use --encoding .png")
    if options.resize:
        img = resize_shorter(img, options.resize)
    return img
