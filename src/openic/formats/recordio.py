"""MXNet RecordIO, byte-compatible with ``MXRecordIO`` / ``MXIndexedRecordIO`` (dmlc-core recordio).

A ``.rec`` file is a sequence of physical parts: ``uint32 magic``, ``uint32 lrec`` (``cflag << 29 | length``),
``length`` payload bytes, zero padding to 4 bytes. The writer splits a logical record wherever the magic word
sits at a 4-byte-aligned offset inside it and drops that word; the reader joins the parts and puts it back.
An ``.idx`` file holds ``key<TAB>offset`` lines. Image records start with the 24-byte ``IRHeader``.

This module is the file format only: it imports neither torch nor numpy, and reads through ``mmap``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import numbers
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from openic.errors import DataError
from openic.fileio import FileLock, OutputError, atomic_write_text, os_reason, replace_durably

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
_PART_HEAD = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
_INT_KEY = re.compile(r"-?[0-9]{1,20}")  # MXIndexedRecordIO's default key_type is int; longer ones cannot be ids
IR_HEADER_SIZE = _IR.size  # 24 bytes

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- physical layer


def split_record(data: bytes) -> list[bytes]:
    """Parts MXNet's writer emits for ``data``: cut at every 4-byte-aligned magic word, dropping it."""
    parts: list[bytes] = []
    start = 0
    aligned_end = len(data) // 4 * 4
    find = data.find
    pos = find(MAGIC_BYTES, 0, aligned_end)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(data[start:pos])
            start = pos + 4
            pos = find(MAGIC_BYTES, start, aligned_end)
        else:
            pos = find(MAGIC_BYTES, pos + 1, aligned_end)
    parts.append(data[start:])
    return parts


def encode_record(data: bytes) -> bytes:
    """The exact bytes MXNet writes for one logical record (all its parts, with padding)."""
    if len(data) > MAX_LENGTH:
        raise DataError(f"record of {len(data)} bytes is too large for RecordIO (limit {MAX_LENGTH} bytes)")
    parts = split_record(data)
    out = bytearray()
    last = len(parts) - 1
    for i, part in enumerate(parts):
        cflag = 0 if last == 0 else (1 if i == 0 else (3 if i == last else 2))
        out += _PART_HEAD.pack(MAGIC, (cflag << LENGTH_BITS) | len(part))
        out += part
        out += b"\0" * (-len(part) % 4)
    return bytes(out)


@dataclass(frozen=True)
class RecordSpan:
    """Where a logical record lives: offset of its first part, parts count, total bytes on disk."""

    offset: int
    parts: int
    size: int


def _read_record(buf: bytes | mmap.mmap, pos: int, end: int, name: str) -> tuple[bytes, RecordSpan]:
    """Parse the logical record whose first part starts at ``pos``."""
    start = pos
    chunks: list[bytes] = []
    parts = 0
    while True:
        if pos + 8 > end:
            what = "a part header" if parts == 0 else f"part {parts + 1} of the record at offset {start}"
            raise DataError(f"{name}: truncated at offset {pos}: expected {what} (8 bytes), file ends at {end}")
        magic, lrec = _PART_HEAD.unpack_from(buf, pos)
        if magic != MAGIC:
            raise DataError(
                f"{name}: bad magic 0x{magic:08x} at offset {pos}, expected 0x{MAGIC:08x} (not a RecordIO file, "
                f"or an offset that does not point at a record)"
            )
        cflag, length = lrec >> LENGTH_BITS, lrec & MAX_LENGTH
        body = pos + 8
        if body + length > end:
            raise DataError(
                f"{name}: truncated record at offset {start}: part at {pos} declares {length} bytes, "
                f"only {end - body} remain"
            )
        if parts == 0 and cflag not in (0, 1):
            raise DataError(
                f"{name}: offset {pos} holds a continuation part (cflag {cflag}), expected the start of a record "
                f"(cflag 0 or 1)"
            )
        if parts > 0 and cflag not in (2, 3):
            raise DataError(
                f"{name}: the split record at offset {start} does not close: part {parts + 1} at offset {pos} "
                f"has cflag {cflag}, expected 2 (middle) or 3 (last)"
            )
        if parts > 0:
            chunks.append(MAGIC_BYTES)
        chunks.append(buf[body : body + length])
        parts += 1
        pos = body + length + (-length % 4)
        if pos > end:
            raise DataError(f"{name}: truncated record at offset {start}: the file ends inside the padding after "
                            f"the part at {body - 8} (expected {pos - end} more bytes)")
        if cflag in (0, 3):
            break
        if pos >= end:
            raise DataError(f"{name}: the split record at offset {start} does not close: file ends after {parts} parts")
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return bytes(data), RecordSpan(start, parts, pos - start)


def scan_stream(f: IO[bytes], name: str, start: int = 0) -> Iterator[tuple[bytes, RecordSpan]]:
    """Logical records read forward from a file object positioned at ``start`` (a pipe, a ranged S3 object):
    each record's parts are read, then checked by the same rules as :class:`RecordReader`'s."""
    pos = start
    while True:
        head = f.read(8)
        if not head:
            return
        parts = [head]
        while len(head) == 8:
            magic, lrec = _PART_HEAD.unpack(head)
            length = lrec & MAX_LENGTH
            body = f.read(length + (-length % 4))
            parts.append(body)
            if magic != MAGIC or len(body) < length + (-length % 4) or lrec >> LENGTH_BITS in (0, 3):
                break
            head = f.read(8)
            parts.append(head)
        buf = b"".join(parts)
        try:
            record, span = _read_record(buf, 0, len(buf), name)
        except DataError as e:
            raise DataError(f"{e} (in the record that starts at offset {pos})") from None
        yield record, RecordSpan(pos, span.parts, span.size)
        pos += span.size


# --------------------------------------------------------------------------- index files


def read_index(idx_path: str | os.PathLike[str]) -> dict[int | str, int]:
    """Parse an ``.idx`` file into ``{key: offset}`` in file order; keys are ints when they look like ints."""
    index: dict[int | str, int] = {}
    try:
        with open(idx_path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{idx_path}: not a text .idx file (not UTF-8 at byte {e.start}); expected "
                        f"'key<TAB>offset' lines") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line!r}")
        key_text, off_text = fields
        try:
            offset = int(off_text)
        except ValueError:
            raise DataError(f"{idx_path}:{lineno}: offset {off_text!r} is not an integer") from None
        if offset < 0:
            raise DataError(f"{idx_path}:{lineno}: offset {offset} is negative")
        key: int | str = int(key_text) if _INT_KEY.fullmatch(key_text) else key_text
        index[key] = offset
    return index


def write_index(idx_path: str | os.PathLike[str], index: dict[int | str, int]) -> None:
    """Write ``{key: offset}`` as MXNet does (``key\\toffset\\n``), atomically."""
    atomic_write_text(idx_path, "".join(f"{k}\t{v}\n" for k, v in index.items()))


def default_idx_path(rec_path: str | os.PathLike[str]) -> Path:
    """``data.rec`` → ``data.idx`` (im2rec's naming)."""
    return Path(rec_path).with_suffix(".idx")


# --------------------------------------------------------------------------- reader


class RecordReader:
    """Read a ``.rec`` file: sequential scan, or random access by key through an ``.idx``.

    The file is memory-mapped, so reads cost no syscalls. With ``idx_path=None`` the reader looks for the
    sibling ``.idx``; keys then come from it. ``build_index()`` scans the file when there is none.
    """

    def __init__(self, path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None, *,
                 use_index: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path}")
        self._file = open(self.path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self._buf: bytes | mmap.mmap = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        )
        self.idx_path = Path(idx_path) if idx_path is not None else default_idx_path(self.path)
        try:
            if idx_path is not None and not self.idx_path.is_file():
                raise FileNotFoundError(f"index file not found: {self.idx_path}")
            wanted = use_index and self.idx_path.is_file()
            self.index: dict[int | str, int] | None = read_index(self.idx_path) if wanted else None
        except BaseException:
            self.close()
            raise

    # -- context manager / pickling (DataLoader workers re-open the file instead of copying the map)
    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        self._buf = b""
        self._file.close()

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "idx_path": self.idx_path if self.index is not None else None,
                "use_index": self.index is not None}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["idx_path"], use_index=state["use_index"])  # type: ignore[misc, arg-type]

    # -- access
    def read_at(self, offset: int) -> bytes:
        """The logical record whose first part starts at byte ``offset``."""
        return self.read_span_at(offset)[0]

    def read_span_at(self, offset: int) -> tuple[bytes, RecordSpan]:
        if not 0 <= offset < self.size:
            raise DataError(f"{self.path}: offset {offset} is outside the file (size {self.size})")
        return _read_record(self._buf, offset, self.size, str(self.path))

    def read_key(self, key: int | str) -> bytes:
        """The record stored under ``key`` in the ``.idx`` file."""
        index = self._require_index()
        if key not in index:
            raise KeyError(f"{self.path}: key {key!r} is not in {self.idx_path}")
        try:
            return self.read_at(index[key])
        except DataError as e:
            raise DataError(
                f"{self.idx_path}: key {key!r} → offset {index[key]} does not point at a record: {e}"
            ) from None

    def keys(self) -> list[int | str]:
        return list(self._require_index())

    def _require_index(self) -> dict[int | str, int]:
        if self.index is None:
            raise DataError(f"{self.path}: no index file ({self.idx_path}); call build_index() or pass idx_path")
        return self.index

    def scan(self) -> Iterator[tuple[bytes, RecordSpan]]:
        """Every logical record in file order, with where it sits."""
        pos, end, buf, name = 0, self.size, self._buf, str(self.path)
        while pos < end:
            data, span = _read_record(buf, pos, end, name)
            yield data, span
            pos += span.size

    def __iter__(self) -> Iterator[bytes]:
        for data, _ in self.scan():
            yield data

    def offsets(self) -> list[int]:
        """Offsets of every logical record, from a scan (ignores the ``.idx``)."""
        return [span.offset for _, span in self.scan()]

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.offsets())

    def build_index(self, idx_path: str | os.PathLike[str] | None = None) -> dict[int | str, int]:
        """Scan the file, key records 0..N-1 in file order, write the ``.idx`` and use it."""
        index: dict[int | str, int] = {i: off for i, off in enumerate(self.offsets())}
        target = Path(idx_path) if idx_path is not None else self.idx_path
        write_index(target, index)
        self.idx_path, self.index = target, index
        return index


# --------------------------------------------------------------------------- writer


class RecordWriter:
    """Write records (and optionally an ``.idx``) exactly as ``MXIndexedRecordIO.write_idx`` does.

    Output goes to hidden ``.NAME.partial-PID`` files that ``close()`` renames into place; if the ``with`` block
    raises, or a write fails (a full disk), they are deleted, so no half-written ``.rec`` appears under its name.
    While open, the writer holds an OS lock on the ``.rec`` (``fileio.FileLock``): a second writer of the same
    file, in this process or another, fails at once with a ``ClientError`` naming the file and the holder's PID.
    """

    def __init__(self, path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._lock = FileLock(self.path.with_name(f".{self.path.name}.lock"), f"cannot write {self.path}")
        self._files: list[tuple[Path, Path, IO[Any]]] = []  # (target, temporary file, open file)
        self._done = False
        try:
            for target, mode in ((self.path, "wb"), (self.idx_path, "w")):
                if target is None:
                    continue
                partial = f".{target.name}.partial-"
                tmp = target.with_name(f"{partial}{os.getpid()}")
                try:
                    for name in os.listdir(target.parent):  # a killed writer's leftovers: we hold the lock
                        if name.startswith(partial):
                            os.unlink(target.with_name(name))
                    self._files.append((target, tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8")))
                except OSError as e:
                    raise OutputError(f"cannot write {target}: {os_reason(e)}") from e
        except BaseException:
            self.abort()
            raise
        self._rec = self._files[0][2]
        self._idx = self._files[1][2] if self.idx_path is not None else None
        self._pos = 0
        self.count = 0

    def write(self, data: bytes, key: int | str | None = None) -> int:
        """Append one logical record; returns its offset. ``key`` (default: running count) goes to the ``.idx``."""
        offset = self._pos
        encoded = encode_record(data)
        try:
            self._rec.write(encoded)
        except OSError as e:
            raise self._failed(self.path, e) from e
        self._pos += len(encoded)
        if self._idx is not None:
            try:
                self._idx.write(f"{self.count if key is None else key}\t{offset}\n")
            except OSError as e:
                raise self._failed(self.idx_path, e) from e
        self.count += 1
        return offset

    def close(self) -> None:
        """Flush and fsync the files, move them into place (the ``.rec`` first), release the lock."""
        if self._done:
            return
        for target, _, f in self._files:
            try:
                f.close()  # flushes; a full disk fails here, before anything is renamed
            except OSError as e:
                raise self._failed(target, e) from e
        for target, tmp, _ in self._files:
            try:
                replace_durably(tmp, target)  # fsync, rename, fsync the folder
            except OSError as e:
                raise self._failed(target, e) from e
        self._done = True
        self._lock.release()

    def _failed(self, target: Path | None, e: OSError) -> OutputError:
        self.abort()
        return OutputError(f"cannot write {target}: {os_reason(e)}")

    def abort(self) -> None:
        """Delete the partial files and release the lock. Closing may fail again (a full disk fails every flush of
        the buffered data), so each step runs whatever the one before did."""
        for _, tmp, f in self._files:
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._done = True
        self._lock.release()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- image record header


class IRHeader(NamedTuple):
    """MXNet's ``IRHeader``: ``flag`` = number of float labels after the header (0 ⇒ ``label`` is the label)."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """``mx.recordio.pack``: a scalar label sets flag 0; a sequence sets flag = its length and follows the header."""
    if isinstance(header.label, numbers.Number):
        return _IR.pack(0, float(header.label), header.id, header.id2) + payload
    labels: Sequence[float] = [float(x) for x in header.label]  # type: ignore[union-attr]
    return _IR.pack(len(labels), 0.0, header.id, header.id2) + struct.pack(f"<{len(labels)}f", *labels) + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """``mx.recordio.unpack``: the header (label a tuple when flag > 0) and the bytes after the labels."""
    if len(record) < IR_HEADER_SIZE:
        raise DataError(f"record of {len(record)} bytes is shorter than the {IR_HEADER_SIZE}-byte image header")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, label, id_, id2), record[IR_HEADER_SIZE:]
    end = IR_HEADER_SIZE + 4 * flag
    if end > len(record):
        raise DataError(
            f"image header says {flag} labels follow ({4 * flag} bytes) but the record has only "
            f"{len(record) - IR_HEADER_SIZE} bytes after the header"
        )
    labels = struct.unpack_from(f"<{flag}f", record, IR_HEADER_SIZE)
    return IRHeader(flag, labels, id_, id2), record[end:]
