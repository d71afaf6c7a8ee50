"""SageMaker augmented manifests (JSON lines) for image classification.

Each line is one JSON object with a ``source-ref`` (the image) and one label attribute, e.g.
``{"source-ref": "s3://bucket/img.jpg", "class": "3", "class-metadata": {...}}``. SageMaker streams the image
and the label attribute (``AttributeNames = ["source-ref", "<label>"]``) and ignores the other keys.

Label values accepted (``label_format`` comes from the channel's content type, see
:func:`parse_label_format`):

* ``multi-hot`` (SageMaker's default): a number (``3``), a numeric string (``"3"``), a multi-hot list
  (``[1, 0, 1]``) or the same list as a JSON string (``"[1, 0, 1]"``). List entries must be 0 or 1.
* ``class-id`` (Ground Truth's multi-label output): class ids as a list or JSON string (``"[0, 2]"``), or one
  id; ``num_classes`` is required and the result is the multi-hot vector of ``num_classes`` columns.

Labels come back as float tuples, like :class:`openic.formats.lst.LstEntry`. Errors name the file and line.
No torch, no numpy.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

from openic.errors import ClientError, DataError, shown
from openic.formats.lst import label_count_mismatch, parse_number, text_lines

LABEL_FORMATS = ("multi-hot", "class-id")
SOURCE_REF = "source-ref"


class ManifestEntry(NamedTuple):
    """One manifest line: the image reference (``s3://…`` or a path) and its labels."""

    source_ref: str
    labels: tuple[float, ...]


def parse_label_format(content_type: str) -> str:
    """The ``label-format`` parameter of a channel content type; ``"multi-hot"`` when absent.

    ``"application/x-recordio; label-format=class-id"`` → ``"class-id"``.

    Raises:
        ClientError: for a ``label-format`` value other than ``multi-hot`` or ``class-id``.
    """
    for param in content_type.split(";")[1:]:
        key, sep, value = param.partition("=")
        if sep and key.strip().lower() == "label-format":
            fmt = value.strip().strip('"').strip().lower()
            if fmt not in LABEL_FORMATS:
                raise ClientError(
                    f"content type {content_type!r}: label-format {fmt!r} is not one of {', '.join(LABEL_FORMATS)}"
                )
            return fmt
    return "multi-hot"


def _detect_attribute(obj: dict[str, Any], where: str) -> str:
    candidates = [k for k in obj if k != SOURCE_REF and not k.endswith("-metadata")]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(
            f"{where}: no label attribute found (keys: {sorted(obj)}); expected one besides "
            f"'{SOURCE_REF}' and '*-metadata'"
        )
    raise DataError(
        f"{where}: several possible label attributes {candidates}; name the one to use (label_attribute / "
        f"--label-attribute)"
    )


def _as_list(value: Any, where: str, attr: str) -> list[Any] | None:
    """The label as a list if it is one (or a JSON array string), else ``None`` for a scalar."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = _loads(value, where)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: label {attr!r} = {shown(value)} is not a valid JSON array ({e.msg})") from None
        if not isinstance(parsed, list):
            raise DataError(f"{where}: label {attr!r} = {shown(value)} is not a JSON array")
        return parsed
    return None


def _class_id(value: Any, where: str, num_classes: int) -> int:
    number = parse_number(value, where, "class id")
    if number != int(number) or not 0 <= number < num_classes:
        raise DataError(f"{where}: class id {shown(value)} is not an integer in 0..{num_classes - 1} (num_classes)")
    return int(number)


def _parse_label(value: Any, fmt: str, num_classes: int | None, where: str, attr: str) -> tuple[float, ...]:
    items = _as_list(value, where, attr)
    if fmt == "class-id":
        assert num_classes is not None
        ids = [_class_id(v, where, num_classes) for v in (items if items is not None else [value])]
        return tuple(1.0 if c in ids else 0.0 for c in range(num_classes))
    if items is None:
        label = parse_number(value, where, f"label {attr!r} =")
        if num_classes is not None and not (label == int(label) and 0 <= label < num_classes):
            raise DataError(f"{where}: label {shown(value)} is not a class id in 0..{num_classes - 1} (num_classes)")
        return (label,)
    labels = tuple(parse_number(v, where, "multi-hot entry") for v in items)
    if any(v not in (0.0, 1.0) for v in labels):
        raise DataError(
            f"{where}: multi-hot label {shown(value)} has entries other than 0 and 1; class ids need "
            f"label-format=class-id in the content type"
        )
    if num_classes is not None and len(labels) != num_classes:
        raise DataError(label_count_mismatch(len(labels), num_classes, where))
    return labels


def read_manifest(
    path: str | os.PathLike[str],
    label_attribute: str | None = None,
    *,
    label_format: str = "multi-hot",
    num_classes: int | None = None,
) -> list[ManifestEntry]:
    """Read an augmented manifest into ``(source_ref, labels)`` entries in file order (see
    :func:`read_manifest_with_lines`, which also gives each entry's line number)."""
    return [entry for _, entry in read_manifest_with_lines(path, label_attribute, label_format=label_format,
                                                           num_classes=num_classes)]


def read_manifest_with_lines(
    path: str | os.PathLike[str],
    label_attribute: str | None = None,
    *,
    label_format: str = "multi-hot",
    num_classes: int | None = None,
) -> list[tuple[int, ManifestEntry]]:
    """Read an augmented manifest into ``(line number, (source_ref, labels))`` pairs in file order.

    Args:
        path: the JSON-lines manifest; blank lines are ignored.
        label_attribute: the key holding the label. ``None`` picks the only key that is neither
            ``source-ref`` nor ``*-metadata`` on the first line, then requires it on every line.
        label_format: ``"multi-hot"`` or ``"class-id"`` (see the module docstring).
        num_classes: required for ``class-id``; otherwise, if given, the required width of multi-hot labels
            (and the bound for scalar class ids).

    Raises:
        ClientError: for an unknown ``label_format`` or ``class-id`` without ``num_classes``.
        DataError: naming file and line, for invalid JSON, a missing ``source-ref`` or label, an ambiguous
            label attribute, a bad label, labels of differing widths, or a file with no entries.
    """
    if label_format not in LABEL_FORMATS:
        raise ClientError(f"label_format {label_format!r} is not one of {', '.join(LABEL_FORMATS)}")
    if label_format == "class-id" and (num_classes is None or num_classes < 1):
        raise ClientError(f"label-format=class-id needs num_classes (a positive int), got {num_classes!r}")
    entries: list[ManifestEntry] = []
    lines: list[int] = []
    attr = label_attribute
    for lineno, line in text_lines(path):
        where = f"{path}:{lineno}"
        obj = _load_object(line, where)
        if attr is None:
            attr = _detect_attribute(obj, where)
        entry = _entry(obj, where, attr, label_format, num_classes)
        if entries and len(entry.labels) != len(entries[0].labels):
            raise DataError(
                f"{where}: {len(entry.labels)} labels, but the first entry has {len(entries[0].labels)}; "
                f"every line needs the same number (the first entry is line {lines[0]})"
            )
        entries.append(entry)
        lines.append(lineno)
    if not entries:
        raise DataError(f"{path}: the manifest has no entries (expected one JSON object per line)")
    return list(zip(lines, entries, strict=True))


def _loads(text: str, where: str) -> Any:
    """``json.loads``, its failures other than bad syntax (left to the caller's message) made DataErrors: an
    integer of more than 4300 digits (Python refuses to convert it), nesting past Python's recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply (more than about {sys.getrecursionlimit()} levels of "
                        f"arrays or objects); a label is a number or a flat list") from None
    except ValueError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None


def _load_object(line: str, where: str) -> dict[str, Any]:
    try:
        obj = _loads(line, where)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _entry(obj: dict[str, Any], where: str, attr: str, fmt: str, num_classes: int | None) -> ManifestEntry:
    ref = obj.get(SOURCE_REF)
    if not isinstance(ref, str) or not ref:
        raise DataError(f"{where}: missing or empty '{SOURCE_REF}' (keys: {sorted(obj)})")
    if attr not in obj:
        raise DataError(f"{where}: label attribute {attr!r} is missing (keys: {sorted(obj)})")
    return ManifestEntry(ref, _parse_label(obj[attr], fmt, num_classes, where, attr))
