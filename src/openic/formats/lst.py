"""Image list (``.lst``) files: ``index<TAB>label(s)<TAB>path``, as MXNet's ``im2rec`` reads and writes them.

One image per line, TAB-separated: an integer index (unique; it becomes the record id and the ``.idx`` key),
one or more float labels (several columns = SageMaker's multi-label multi-hot vector), then the image path
relative to the image root. Fields are stripped of surrounding whitespace, as ``im2rec``'s ``read_list`` does.

Where this reader differs from MXNet on purpose: ``im2rec`` prints and *skips* a line with fewer than three
fields or an unparsable number, so a typo silently drops an image. Here every such line raises ``DataError``
naming the file and line. Blank lines carry nothing and are ignored. The index must fit the record header's
``uint64`` id, labels must be finite, and every line must have the same number of label columns.

No torch, no numpy: this module is part of the file-format layer.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from openic.errors import DataError, shown
from openic.fileio import atomic_write_text

_MAX_INDEX = 2**64 - 1  # the IRHeader id is a uint64
CLASSES_SUFFIX = "_classes.txt"  # im2rec's class-name sidecar: PREFIX_classes.txt, line i names label i


class LstEntry(NamedTuple):
    """One ``.lst`` line: record index, label columns (floats), image path relative to the root."""

    index: int
    labels: tuple[float, ...]
    path: str


def label_count_mismatch(width: int, num_classes: int, where: str = "") -> str:
    """SageMaker's own words for a multi-label row whose width is not ``num_classes`` (spec §3), one place."""
    at = f"{where}: " if where else ""
    return (f"{at}Mismatch between number of labels in the multi-label data ({width}) and the num_classes "
            f"parameter ({num_classes}).")


def parse_number(value: object, where: str, what: str, context: str = "") -> float:
    """A finite label value from text or a JSON number; errors say where and what (shared with manifests)."""
    said = f"{where}: {what} {shown(value)}{context}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{said} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{said} is not a number") from None
    except OverflowError:  # an int past float's range (about 1.8e308); text like "1e400" gives inf instead
        raise DataError(f"{said} is too large for a label (beyond the float range, about 1.8e308)") from None
    if not math.isfinite(number):
        raise DataError(f"{said} is not a finite number")
    return number


def _parse_line(fields: list[str], where: str) -> LstEntry:
    if len(fields) < 3:
        raise DataError(
            f"{where}: expected at least 3 TAB-separated fields (index, label(s), path), got {len(fields)}: {fields!r}"
        )
    index_text, *label_texts, path = fields
    if not index_text.isascii() or not index_text.isdigit():
        raise DataError(f"{where}: index {shown(index_text)} is not a non-negative integer")
    # length first: int() refuses text of more than 4300 digits
    if len(index_text.lstrip("0")) > len(str(_MAX_INDEX)) or int(index_text) > _MAX_INDEX:
        raise DataError(f"{where}: index {shown(index_text, show=str)} does not fit the record header's uint64 id "
                        f"(max {_MAX_INDEX}; {len(index_text)} digits)")
    index = int(index_text)
    labels: list[float] = []
    for col, text in enumerate(label_texts, 2):
        labels.append(parse_number(text, where, "label", f" in column {col}"))
    if not path:
        raise DataError(f"{where}: the image path (last field) is empty")
    return LstEntry(index, tuple(labels), path)


def text_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file (BOM allowed) with 1-based numbers; other bytes are a DataError.

    Shared by ``.lst`` files and augmented manifests, so both number lines the same way in their messages.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_lst_with_lines(path: str | os.PathLike[str], *, num_classes: int | None = None) -> list[tuple[int, LstEntry]]:
    """Like :func:`read_lst`, with each entry's 1-based line number (for messages about an entry later on)."""
    rows: list[tuple[int, LstEntry]] = []
    seen: dict[int, int] = {}  # index -> line
    width: int | None = None
    for lineno, line in text_lines(path):
        where = f"{path}:{lineno}"
        entry = _parse_line([field.strip() for field in line.strip().split("\t")], where)
        if entry.index in seen:
            raise DataError(f"{where}: index {entry.index} already used on line {seen[entry.index]}")
        seen[entry.index] = lineno
        if width is None:
            width = len(entry.labels)
            if num_classes is not None and width != num_classes:
                raise DataError(label_count_mismatch(width, num_classes, where))
        elif len(entry.labels) != width:
            first = rows[0][0]
            raise DataError(
                f"{where}: {len(entry.labels)} label columns, but line {first} has {width}; every line "
                f"needs the same number"
            )
        rows.append((lineno, entry))
    if not rows:
        raise DataError(f"{path}: the list file has no entries (expected lines 'index<TAB>label<TAB>path')")
    return rows


def read_lst(path: str | os.PathLike[str], *, num_classes: int | None = None) -> list[LstEntry]:
    """Read a ``.lst`` file in file order.

    Args:
        path: the list file (UTF-8; a BOM is ignored).
        num_classes: if given, the required number of label columns: pass it for multi-label lists, where
            each line holds a multi-hot vector of ``num_classes`` columns.

    Raises:
        DataError: naming the file and line, for a line with fewer than 3 fields, an index that is not a
            non-negative integer, a duplicate index, a non-numeric or non-finite label, a label count that
            differs from an earlier line or from ``num_classes``, or a file with no entries.
    """
    return [entry for _, entry in read_lst_with_lines(path, num_classes=num_classes)]


def format_lst_line(entry: LstEntry) -> str:
    """One line as ``im2rec``'s ``write_list`` formats it: ``%d\\t``, each label ``%f\\t``, path, newline."""
    if any(c in entry.path for c in "\t\n\r") or not entry.path.strip():
        raise DataError(f"image path {entry.path!r} cannot be written to a .lst line (empty, or has a TAB/newline)")
    if entry.index < 0:
        raise DataError(f"index {entry.index} of {entry.path!r} is negative; .lst indices are uint64 record ids")
    return f"{entry.index:d}\t" + "".join(f"{label:f}\t" for label in entry.labels) + f"{entry.path}\n"


def write_lst(path: str | os.PathLike[str], entries: Iterable[LstEntry]) -> None:
    """Write entries exactly as MXNet's ``im2rec --list`` does, atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)}: folder {folder} does not exist")
    atomic_write_text(path, "".join(format_lst_line(entry) for entry in entries))


def classes_path(prefix: str | os.PathLike[str]) -> Path:
    """The class-name sidecar of a ``.lst``/``.rec`` prefix: ``PREFIX_classes.txt``."""
    return Path(f"{os.fspath(prefix)}{CLASSES_SUFFIX}")


def write_classes(path: str | os.PathLike[str], names: Iterable[str]) -> Path:
    """Write the class-name sidecar atomically, one name per line (line ``i`` names label ``i``)."""
    names = [str(n) for n in names]
    bad = [n for n in names if "\n" in n or "\r" in n]
    if bad:
        raise DataError(f"class name {bad[0]!r} cannot be written to {os.fspath(path)}: it holds a newline")
    atomic_write_text(path, "".join(f"{n}\n" for n in names))
    return Path(path)


def read_classes(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a ``PREFIX_classes.txt`` sidecar: line ``i`` names label ``i``."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{os.fspath(path)}: class names are not UTF-8 text ({e})") from None


def resolve_image_path(root: str | os.PathLike[str], rel: str, *, source: str) -> Path:
    """``root / rel`` for a path read from a list or manifest, refusing paths that leave ``root``.

    The check is lexical: an absolute path, or one whose normalized form starts with ``..``, is rejected.
    Symlinks inside ``root`` are followed wherever they point, because ``im2rec --list`` itself walks with
    ``followlinks=True`` and datasets are often folders of links into a shared image store; the check guards
    against a list written for another layout, not against a hostile file system.

    Args:
        root: the image root folder.
        rel: the relative path as written in the file (``/`` separators).
        source: where ``rel`` came from, e.g. ``"train.lst:12"``, for the error message.

    Raises:
        DataError: for an empty, absolute or escaping path.
    """
    return Path(root) / checked_relative_path(root, rel, source=source)


def checked_relative_path(root: str | os.PathLike[str], rel: str, *, source: str) -> str:
    """``rel`` normalized, or DataError when it is empty, absolute or leaves ``root`` (:func:`resolve_image_path`'s
    check, for callers that join paths as strings: im2rec does it for every image)."""
    if not rel:
        raise DataError(f"{source}: empty image path")
    if rel.startswith("/") or os.path.isabs(rel):  # POSIX-absolute, or absolute on this OS
        raise DataError(f"{source}: image path {rel!r} is absolute; paths must be relative to the root {root}")
    norm = posixpath.normpath(rel)
    if norm == ".":
        raise DataError(f"{source}: image path {rel!r} names the image root {root} itself, not an image file")
    if norm == ".." or norm.startswith("../"):
        raise DataError(f"{source}: image path {rel!r} points outside the image root {root}")
    return norm
