"""Look inside ``.rec`` files: one plain dict per record, for ``openic rec inspect`` and for debugging data.

The fields mirror what MXNet's ``recordio.unpack`` would report (flag, label, id, id2) plus where the record sits
(offset, parts) and a digest of its payload, so two files can be compared record by record. numpy only (no torch).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from openic.errors import ClientError, DataError
from openic.formats.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    check_image_size,
    decode_image,
    image_format,
)
from openic.formats.recordio import IR_HEADER_SIZE, RecordReader, default_idx_path, unpack, write_index


def inspect_records(
    rec_path: str | os.PathLike[str],
    idx_path: str | os.PathLike[str] | None = None,
    decode: bool = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per logical record, in file order.

    Keys: ``key`` (from the ``.idx``, the sibling one by default, null for a record it does not list; without
    an ``.idx`` the 0-based record number), ``offset``, ``parts``, ``rec_len``, ``flag``, ``label`` (float, or
    list when flag > 0), ``id``, ``id2``, ``payload_len``, ``payload_md5``, ``format``. A record too short for
    the 24-byte image header (a plain payload) is listed with a null header and its whole bytes as payload; one
    whose header announces more labels than it holds is listed the same way, with ``header_error`` saying why.
    With ``decode``: ``shape``, ``sum``, ``csum``
    (per RGB channel) and ``pix_md5`` (md5 of the HxWx3 uint8 array), or ``decode_error``.

    Raises:
        DataError: the file is not valid RecordIO (bad magic, truncated, broken split record), or an ``.idx``
            offset does not point at the start of a record (raised after the last record).
        ImageTooLargeError: with ``decode``, an image declares more than ``max_pixels`` pixels: an error, not a
            ``decode_error``, because decoding it would cost gigabytes (the message names the record).
    """
    if decode:
        check_image_size(b"", max_pixels)  # a bad limit fails before any output
    with RecordReader(rec_path, idx_path) as reader:
        keys = {offset: key for key, offset in reader.index.items()} if reader.index is not None else None
        seen: set[int] = set()
        for number, (data, span) in enumerate(reader.scan()):
            seen.add(span.offset)
            key = number if keys is None else keys.get(span.offset)
            info: dict[str, Any] = {"key": key, "offset": span.offset, "parts": span.parts, "rec_len": len(data)}
            payload = _add_header(info, data)
            info["payload_len"] = len(payload)
            info["payload_md5"] = hashlib.md5(payload).hexdigest()
            info["format"] = image_format(payload)
            if decode:
                try:
                    info.update(_decoded(payload, max_pixels))
                except ImageTooLargeError as e:
                    where = f"{reader.path}: record key {key!r} at offset {span.offset}"
                    raise ImageTooLargeError(f"{where}: {e}") from None
            yield info
        if keys is not None:
            stray = [(key, off) for off, key in keys.items() if off not in seen]
            if stray:
                key, off = stray[0]
                raise DataError(
                    f"{reader.idx_path}: key {key!r} → offset {off} is not the start of a record in {reader.path} "
                    f"({len(stray)} such entries)"
                )


def _add_header(info: dict[str, Any], data: bytes) -> bytes:
    """Fill flag/label/id/id2 from the image header; returns the payload after it (the whole record if none)."""
    try:
        header, payload = unpack(data)
    except DataError as e:
        info.update(flag=None, label=None, id=None, id2=None)
        if len(data) >= IR_HEADER_SIZE:  # shorter records are plain payloads (no header), not broken ones
            info["header_error"] = str(e)
        return data
    label = list(header.label) if isinstance(header.label, tuple) else header.label
    info.update(flag=header.flag, label=label, id=header.id, id2=header.id2)
    return payload


def _decoded(payload: bytes, max_pixels: int | None) -> dict[str, Any]:
    try:
        rgb = decode_image(payload, max_pixels=max_pixels)
    except ImageTooLargeError:
        raise
    except DataError as e:
        return {"decode_error": str(e)}
    csum = [int(c) for c in rgb.reshape(-1, 3).sum(axis=0, dtype="int64")]
    return {"shape": list(rgb.shape), "sum": sum(csum), "csum": csum, "pix_md5": hashlib.md5(rgb.tobytes()).hexdigest()}


def index_records(
    rec_path: str | os.PathLike[str],
    idx_path: str | os.PathLike[str] | None = None,
    key: Literal["number", "id"] = "number",
) -> dict[int | str, int]:
    """Scan a ``.rec`` and write its ``.idx`` (default: the sibling one, which must not exist yet).

    ``key="number"`` keys records 0..N-1 in file order (what ``RecordReader.build_index`` does);
    ``key="id"`` uses each record's IRHeader id, which for files made by im2rec is the ``.lst`` index and so
    rebuilds the original ``.idx`` exactly.

    Raises:
        DataError: the ``.rec`` is malformed, or with ``key="id"`` a record has no header or repeats an id.
        ClientError: the ``.idx`` already exists (delete it to rebuild).
    """
    target = Path(idx_path) if idx_path is not None else default_idx_path(rec_path)
    if target.is_dir():
        raise ClientError(f"{target} is a folder; name the .idx file to write")
    if target.exists():
        raise ClientError(f"index file already exists: {target} (delete it to rebuild)")
    index: dict[int | str, int] = {}
    with RecordReader(rec_path, use_index=False) as reader:  # the old .idx may be the damaged one being replaced
        for number, (data, span) in enumerate(reader.scan()):
            k: int = number
            if key == "id":
                try:
                    k = unpack(data)[0].id
                except DataError as e:
                    raise DataError(f"{rec_path}: record {number} at offset {span.offset}: {e}") from None
                if k in index:
                    raise DataError(
                        f"{rec_path}: id {k} at offset {span.offset} repeats the record at offset {index[k]}; "
                        f"use key='number'"
                    )
            index[k] = span.offset
    write_index(target, index)
    return index
