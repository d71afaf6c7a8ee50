"""Image folder → ``.lst`` → ``.rec``/``.idx``, following MXNet 1.9.1's ``tools/im2rec.py``.

API (``openic im2rec`` is a thin shell over it):

* ``make_list(prefix, root, ListOptions) -> ListResult`` (``--list``); ``list_images(root, *, recursive, exts)
  -> (entries, class_names)`` is the walk alone; the class sidecar is read and written by :mod:`openic.formats.lst`.
* ``pack_lst(lst_path, root, out_prefix, PackOptions) -> PackResult``: one list → ``out_prefix.rec``/``.idx``.
* ``pack_prefix(prefix, root, PackOptions) -> list[PackResult]``: MXNet's packing mode, every ``.lst`` that
  :func:`find_lst_files` matches (absolute path starts with ``prefix``; all of them if it is a folder).

Listing, as MXNet: with ``recursive``, each folder that directly holds an image gets the next label in a
pre-order ``os.walk(followlinks=True)`` whose folders and files are sorted by name, so ``root``'s own images
come first; without it only ``root``'s files are listed, label 0. The list is shuffled with ``random.seed(100)``
unless ``shuffle=False`` (same permutation as MXNet), then cut ``[test | train | val]`` per chunk with MXNet's
arithmetic into ``PREFIX[_<chunk>][_train|_val|_test].lst``, labels written ``%f``. With ``recursive`` the
class names (folder paths relative to ``root``; ``.`` is ``root``) also go to ``PREFIX_classes.txt``, line i
naming label i. A file's extension is lowercased before it is compared with ``exts`` (as MXNet does, so
``--exts .JPG`` matches nothing); a symlink back to an ancestor folder is not followed.

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
we, with a warning), an empty folder and ``color=-1`` (alpha, 16-bit: unusable for training) are
``ClientError``. Outputs appear atomically (``.partial`` + rename).
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from openic.errors import ClientError, DataError
from openic.formats.images import (
    apply_exif_orientation,
    decode_image,
    encode_image,
    exif_orientation,
    image_format,
    resize_shorter,
)
from openic.formats.lst import LstEntry, read_lst_with_lines, resolve_image_path, write_classes, write_lst
from openic.formats.lst import classes_path as classes_sidecar
from openic.formats.recordio import IRHeader, RecordWriter, pack

log = logging.getLogger(__name__)

DEFAULT_EXTS = (".jpeg", ".jpg", ".png")
_SHUFFLE_SEED = 100  # MXNet's fixed seed: the same folder gives the same split on every run
_PASS_THROUGH_FORMATS = ("jpeg", "png")


@dataclass(frozen=True)
class ListOptions:
    """``im2rec --list`` options (MXNet's names and defaults)."""

    exts: tuple[str, ...] = DEFAULT_EXTS
    recursive: bool = False
    shuffle: bool = True
    chunks: int = 1
    train_ratio: float = 1.0
    test_ratio: float = 0.0

    def __post_init__(self) -> None:
        bad = [e for e in self.exts if not e.startswith(".") or len(e) < 2]
        if not self.exts or bad:
            raise ClientError(f"exts {list(self.exts)}: each extension must start with a dot, e.g. .jpg .png")
        if self.chunks < 1:
            raise ClientError(f"chunks must be a positive int, got {self.chunks}")
        if not 0.0 <= self.train_ratio <= 1.0 or not 0.0 <= self.test_ratio <= 1.0:
            raise ClientError(f"train_ratio {self.train_ratio} and test_ratio {self.test_ratio} must be in [0, 1]")
        if self.train_ratio + self.test_ratio > 1.0 and self.train_ratio != 1.0:
            raise ClientError(
                f"train_ratio + test_ratio = {self.train_ratio + self.test_ratio} exceeds 1; lower one of them"
            )


@dataclass(frozen=True)
class ListResult:
    """What :func:`make_list` wrote."""

    lst_paths: tuple[Path, ...]
    num_images: int
    classes: tuple[str, ...]
    classes_path: Path | None


@dataclass(frozen=True)
class PackOptions:
    """``im2rec`` packing options (MXNet's names and defaults), plus ``skip_bad`` and ``progress``."""

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

    def __post_init__(self) -> None:
        if self.resize < 0:
            raise ClientError(f"resize must be 0 (keep the size) or a positive int, got {self.resize}")
        if not 0 <= self.quality <= 100:
            raise ClientError(f"quality must be in 0..100 (JPEG quality; PNG compression 0..9), got {self.quality}")
        if self.num_thread < 1:
            raise ClientError(f"num_thread must be a positive int, got {self.num_thread}")
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


# --------------------------------------------------------------------------- listing


def list_images(
    root: str | os.PathLike[str], *, recursive: bool, exts: Sequence[str]
) -> tuple[list[LstEntry], list[str]]:
    """Images under ``root`` in MXNet's walk order (index = position) and the class names in label order."""
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise FileNotFoundError(f"image root {root_s!r} is not a folder")
    wanted = set(exts)  # MXNet lowercases the file's suffix but not --exts: `.JPG` matches nothing there either
    found: list[tuple[str, int]] = []
    classes: dict[str, int] = {}
    for folder, files in _walk(root_s, recursive):
        for name in files:
            fpath = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in wanted and os.path.isfile(fpath):
                rel = os.path.relpath(fpath, root_s)
                if any(c in rel for c in "\t\n\r"):
                    raise ClientError(f"{fpath!r}: a TAB or newline in an image path cannot be written to a .lst")
                found.append((rel, classes.setdefault(folder, len(classes))))
    entries = [LstEntry(i, (float(label),), rel) for i, (rel, label) in enumerate(found)]
    return entries, [os.path.relpath(folder, root_s) for folder in classes]


def _walk(root: str, recursive: bool) -> Iterator[tuple[str, list[str]]]:
    """``(folder, sorted file names)``: ``os.walk(followlinks=True)`` with sorted folders, or ``root`` alone."""
    if not recursive:
        yield root, sorted(os.listdir(root))
        return

    def fail(err: OSError) -> None:  # os.walk ignores unreadable folders by default; a lost class is worse
        raise err

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=fail):
        real = os.path.realpath(folder)
        loops = [d for d in dirs if _is_ancestor(os.path.realpath(os.path.join(folder, d)), real)]
        for d in loops:  # MXNet would recurse until the path is too long
            log.warning("not following %s: it links back to %s", os.path.join(folder, d), real)
            dirs.remove(d)
        dirs.sort()
        yield folder, sorted(files)


def _is_ancestor(candidate: str, path: str) -> bool:
    return path == candidate or path.startswith(candidate.rstrip(os.sep) + os.sep)


def _split(entries: list[LstEntry], options: ListOptions, prefix: str) -> list[tuple[str, list[LstEntry]]]:
    """MXNet's chunk and train/val/test arithmetic: ``(file name, entries)`` in the order MXNet writes them."""
    chunk_size = (len(entries) + options.chunks - 1) // options.chunks
    out: list[tuple[str, list[LstEntry]]] = []
    for i in range(options.chunks):
        chunk = entries[i * chunk_size : (i + 1) * chunk_size]
        base = f"{prefix}_{i}" if options.chunks > 1 else prefix
        sep = int(chunk_size * options.train_ratio)
        sep_test = int(chunk_size * options.test_ratio)
        if options.train_ratio == 1.0:  # MXNet ignores test_ratio then, and so do we (with a warning)
            if options.test_ratio:
                log.warning("test_ratio %g is ignored because train_ratio is 1, as MXNet's im2rec does",
                            options.test_ratio)
            out.append((f"{base}.lst", chunk))
            continue
        if options.test_ratio:
            out.append((f"{base}_test.lst", chunk[:sep_test]))
        if options.train_ratio + options.test_ratio < 1.0:
            out.append((f"{base}_val.lst", chunk[sep_test + sep :]))
        out.append((f"{base}_train.lst", chunk[sep_test : sep_test + sep]))
    return out


def make_list(
    prefix: str | os.PathLike[str], root: str | os.PathLike[str], options: ListOptions = ListOptions()
) -> ListResult:
    """Write the ``.lst`` file(s) for the images under ``root`` (``im2rec --list``); see the module docstring."""
    prefix_s = os.path.abspath(prefix)
    entries, classes = list_images(root, recursive=options.recursive, exts=options.exts)
    if not entries:
        where = f"under {root}" if options.recursive else f"directly in {root} (use --recursive for sub-folders)"
        raise ClientError(f"no images with extensions {' '.join(options.exts)} {where}")
    if options.shuffle:
        random.Random(_SHUFFLE_SEED).shuffle(entries)
    written = []
    for path, chunk in _split(entries, options, prefix_s):
        write_lst(path, chunk)
        written.append(Path(path))
        log.info("wrote %s (%d images)", path, len(chunk))
    classes_path = None
    if options.recursive:
        classes_path = write_classes(classes_sidecar(prefix_s), classes)
        log.info("wrote %s: %s", classes_path, ", ".join(f"{n}={i}" for i, n in enumerate(classes)))
    return ListResult(tuple(written), len(entries), tuple(classes), classes_path)


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
    path: Path
    header: IRHeader


def _jobs(lst_path: Path, root: str | os.PathLike[str], pack_label: bool) -> list[_Job]:
    """Every line of the list, checked (format and paths) before any image is read."""
    jobs = []
    for lineno, entry in read_lst_with_lines(lst_path):
        source = f"{lst_path}:{lineno}"
        path = resolve_image_path(root, entry.path, source=source)
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


def _encode_chunk(chunk: list[_Job], options: PackOptions) -> list[bytes | Skip]:
    return [_encode(job, options) for job in chunk]


def _results(jobs: list[_Job], options: PackOptions) -> Iterator[tuple[_Job, bytes | Skip]]:
    """Encoded records (or skips) in list order; ``num_thread > 1`` encodes ahead in a bounded thread window.

    Work goes to the threads in chunks: one small image takes well under a millisecond, so handing images over
    one by one would cost more in thread hand-offs than the threads gain.
    """
    if options.num_thread == 1:
        for job in jobs:
            yield job, _encode(job, options)
        return
    size = 32
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    window = 2 * options.num_thread  # enough to keep the threads busy without holding the whole data set
    pending: deque[tuple[list[_Job], Future[list[bytes | Skip]]]] = deque()
    with ThreadPoolExecutor(options.num_thread, thread_name_prefix="im2rec") as pool:
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(_encode_chunk, chunk, options)))
                if len(pending) >= window:
                    done, fut = pending.popleft()
                    yield from zip(done, fut.result(), strict=True)
            while pending:
                done, fut = pending.popleft()
                yield from zip(done, fut.result(), strict=True)
        finally:
            for _, fut in pending:
                fut.cancel()


def _encode(job: _Job, options: PackOptions) -> bytes | Skip:
    """One record, or a :class:`Skip` when the file cannot be read or decoded (other errors propagate)."""
    try:
        data = job.path.read_bytes()
    except OSError as e:
        return Skip(job.source, os.fspath(job.path), f"cannot read the file ({e.strerror or e})")
    if options.pass_through:
        fmt = image_format(data)
        if fmt not in _PASS_THROUGH_FORMATS:
            return Skip(job.source, os.fspath(job.path), f"not a JPEG or PNG file (detected: {fmt})")
        return pack(job.header, data)
    try:
        img = decode_image(data, channels=3 if options.color == 1 else 1)
    except DataError as e:
        return Skip(job.source, os.fspath(job.path), f"cannot decode the image ({e})")
    # MXNet's im2rec reads files with cv2.imread, which turns EXIF-rotated photos upright before packing
    img = apply_exif_orientation(img, exif_orientation(data))
    img = _transform(img, options)
    return pack(job.header, encode_image(img, options.encoding, options.quality))


def _transform(img: np.ndarray, options: PackOptions) -> np.ndarray:
    """MXNet's ``--center-crop`` then ``--resize`` (shorter side, integer arithmetic), on an HxWxC array."""
    h, w = img.shape[:2]
    if options.center_crop:
        if h > w:
            margin = (h - w) // 2
            img = img[margin : margin + w]
        else:
            margin = (w - h) // 2
            img = img[:, margin : margin + h]
    if options.resize:
        img = resize_shorter(img, options.resize)
    return img
