"""Image folder → ``.lst`` files (``im2rec --list``), following MXNet 1.9.1's ``tools/im2rec.py``.

* ``make_list(prefix, root, ListOptions) -> ListResult``; ``list_images(root, *, recursive, exts)
  -> (entries, class_names)`` is the walk alone. Packing the lists is :mod:`openic.prep.im2rec`.

Listing, as MXNet: with ``recursive``, each folder that directly holds an image gets the next label in a
pre-order ``os.walk(followlinks=True)`` whose folders and files are sorted by name, so ``root``'s own images
come first; without it only ``root``'s files are listed, label 0. The list is shuffled with ``random.seed(100)``
unless ``shuffle=False`` (same permutation as MXNet), then cut ``[test | train | val]`` per chunk with MXNet's
arithmetic into ``PREFIX[_<chunk>][_train|_val|_test].lst``, labels written ``%f``. With ``recursive`` the
class names (folder paths relative to ``root``; ``.`` is ``root``) also go to ``PREFIX_classes.txt``, line i
naming label i. A file's extension is lowercased before it is compared with ``exts`` (as MXNet does, so
``--exts .JPG`` matches nothing); a symlink back to an ancestor folder is not followed.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from openic.errors import ClientError
from openic.formats.lst import LstEntry, write_classes, write_lst
from openic.formats.lst import classes_path as classes_sidecar

log = logging.getLogger(__name__)

DEFAULT_EXTS = (".jpeg", ".jpg", ".png")
_SHUFFLE_SEED = 100  # MXNet's fixed seed: the same folder gives the same split on every run


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


def _check_chunks(chunks: int, images: int) -> None:
    """MXNet puts ``ceil(images / chunks)`` images in each chunk, so too many chunks leave the last lists empty
    (MXNet writes them; packing them would then fail)."""
    size = -(-images // chunks)
    filled = -(-images // size)
    if filled < chunks:
        raise ClientError(
            f"--chunks {chunks} with {images} images: chunks of {size} image{'s' * (size > 1)} fill {filled} lists "
            f"and leave {chunks - filled} empty; use e.g. --chunks {filled} (never more than the {images} images)"
        )


def make_list(
    prefix: str | os.PathLike[str], root: str | os.PathLike[str], options: ListOptions = ListOptions()
) -> ListResult:
    """Write the ``.lst`` file(s) for the images under ``root`` (``im2rec --list``); see the module docstring."""
    prefix_s = os.path.abspath(prefix)
    entries, classes = list_images(root, recursive=options.recursive, exts=options.exts)
    if not entries:
        where = f"under {root}" if options.recursive else f"directly in {root} (use --recursive for sub-folders)"
        raise ClientError(f"no images with extensions {' '.join(options.exts)} {where}")
    _check_chunks(options.chunks, len(entries))
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
