"""MXNet's ``.params`` file (the NDArray list of ``mx.nd.save`` / ``save_checkpoint``), read with numpy alone.

The layout (``shared/fixtures/mxnet_models/PARAMS_FORMAT.md``): a list header (magic 0x112, reserved, count), one
record per array (V2 0xF993FAC9 as MXNet 1.x writes, V3 0xF993FACA with numpy shape semantics, legacy V1
0xF993FAC8 and pre-V1 records whose first word is ``ndim``), then the names. Sparse arrays (row_sparse, csr) are
returned dense. Everything is little-endian and unaligned. Every size is checked against the bytes that remain
before anything is allocated (a sparse array's dense form against ``MAX_SPARSE_DENSE_BYTES``), so a damaged or
hostile file raises ``ClientError`` naming the offset instead of exhausting memory. MXNet itself is never imported.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from openic.errors import ClientError

LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
MAX_NDIM = 32
MAX_SPARSE_DENSE_BYTES = 1 << 30  # a sparse array is returned dense: bounded, as its shape costs the file nothing
# mshadow TypeFlag -> numpy dtype; 12 is bfloat16, which numpy lacks: widened to float32 (exact)
DTYPES: dict[int, str] = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2",
                          9: "<u2", 10: "<u4", 11: "<u8", 12: "bfloat16"}
_STYPES = {0: "default", 1: "row_sparse", 2: "csr"}


class _Cursor:
    """A position in the file's bytes; every read checks that the bytes exist."""

    def __init__(self, data: bytes | memoryview, source: str) -> None:
        self.data, self.pos, self.source = memoryview(data), 0, source

    def fail(self, what: str) -> ClientError:
        return ClientError(f"{self.source}: not a valid MXNet .params file: {what} at byte {self.pos}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{what} needs {n} bytes but {len(self.data) - self.pos} remain (truncated?)")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("i", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)[0]


def _shape(cur: _Cursor, *, wide: bool = True) -> tuple[int, ...] | None:
    """A TShape (i32 ndim + i64 dims; pre-V1: u32 dims); None for MXNet's "unknown" shape (ndim -1 or a -1 dim)."""
    ndim = cur.i32("shape ndim")
    if ndim == -1:
        return None
    if not 0 <= ndim <= MAX_NDIM:
        raise cur.fail(f"shape with {ndim} dimensions (at most {MAX_NDIM})")
    dims = cur.unpack(("q" if wide else "I") * ndim, "shape dimensions")
    if any(d == -1 for d in dims):
        return None
    if any(d < 0 for d in dims):
        raise cur.fail(f"negative dimension in shape {dims}")
    return tuple(dims)


def _dtype(cur: _Cursor) -> str:
    flag = cur.i32("dtype flag")
    if flag not in DTYPES:
        raise cur.fail(f"unknown dtype flag {flag} (known: {', '.join(map(str, DTYPES))})")
    return DTYPES[flag]


def _payload(cur: _Cursor, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = math.prod(shape)  # Python integers: dimensions near 2**63 must not wrap around
    item = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if count > (len(cur.data) - cur.pos) // item:  # checked before anything is allocated
        raise cur.fail(f"{what} of shape {shape} ({dtype}) is larger than the rest of the file (truncated?)")
    if dtype == "bfloat16":
        raw = np.frombuffer(cur.take(2 * count, what), "<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    return np.frombuffer(cur.take(count * item, what), dtype).reshape(shape).copy()


def _sparse(cur: _Cursor, stype: int, shape: tuple[int, ...], storage: tuple[int, ...] | None,
            dtype: str) -> np.ndarray:
    """row_sparse (aux: indices) or csr (aux: indptr, indices), densified."""
    n_aux = 1 if stype == 1 else 2
    aux = []
    for _ in range(n_aux):
        aux_dtype = _dtype(cur)
        aux_shape = _shape(cur)
        if aux_shape is None or len(aux_shape) != 1:
            raise cur.fail(f"sparse array with aux shape {aux_shape} (expected one dimension)")
        aux.append((aux_dtype, aux_shape))
    if storage is None or math.prod(storage) == 0:  # MXNet sometimes writes (0,): rebuild it from the aux
        storage = (aux[0][1][0],) + shape[1:] if stype == 1 else (aux[1][1][0],)
    expected = (storage[0],) + shape[1:] if stype == 1 else storage[:1]
    if len(shape) < 1 or (stype == 2 and len(shape) != 2) or tuple(storage) != expected:
        raise cur.fail(f"{_STYPES[stype]} storage shape {storage} does not fit the array shape {shape}")
    if math.prod(shape) * 8 > max(MAX_SPARSE_DENSE_BYTES, 64 * len(cur.data)):
        raise cur.fail(f"{_STYPES[stype]} array of shape {shape} would take more than "
                       f"{MAX_SPARSE_DENSE_BYTES // 2**20} MiB dense")
    values = _payload(cur, dtype, storage, "sparse values")
    arrays = [_payload(cur, d, s, "sparse aux array").astype(np.int64) for d, s in aux]
    dense = np.zeros(shape, values.dtype)
    if stype == 1:
        rows = arrays[0]
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0] or len(rows) != len(values)):
            raise cur.fail(f"row_sparse indices out of range for shape {shape}")
        dense[rows] = values
        return dense
    indptr, cols = arrays
    if len(shape) != 2 or len(indptr) != shape[0] + 1 or len(cols) != len(values) or \
            (cols.size and (cols.min() < 0 or cols.max() >= shape[1])) or np.any(np.diff(indptr) < 0) or \
            (indptr.size and (indptr[0] != 0 or indptr[-1] != len(values))):
        raise cur.fail(f"csr structure does not fit shape {shape}")
    for r in range(shape[0]):
        dense[r, cols[indptr[r]:indptr[r + 1]]] = values[indptr[r]:indptr[r + 1]]
    return dense


def _record(cur: _Cursor) -> np.ndarray | None:
    """One NDArray; None for an empty ("none") array."""
    start = cur.pos
    magic = cur.u32("record magic")
    if magic in (V2, V3):
        stype = cur.i32("storage type")
        if stype not in _STYPES:
            raise cur.fail(f"unknown storage type {stype} (known: 0 dense, 1 row_sparse, 2 csr)")
        if stype and magic == V3:
            raise cur.fail("sparse array in a V3 (numpy-semantics) record")
        storage = _shape(cur) if stype else None
        shape = _shape(cur)
        if shape is None or (magic == V2 and len(shape) == 0):
            return None
    elif magic == V1 or magic <= MAX_NDIM:
        if magic != V1:
            cur.pos = start  # pre-V1: the word read is ndim itself, followed by u32 dims
        shape = _shape(cur, wide=magic == V1)
        if shape is None or len(shape) == 0:
            return None
        stype, storage = 0, None
    else:
        raise cur.fail(f"unknown NDArray record magic 0x{magic:08X}")
    cur.unpack("ii", "context")  # where the array lived (cpu/gpu): irrelevant to its contents
    dtype = _dtype(cur)
    if stype:
        return _sparse(cur, stype, shape, storage, dtype)
    return _payload(cur, dtype, shape, "array data")


def parse_params(data: bytes | memoryview, source: str = "<bytes>") -> dict[str, np.ndarray | None]:
    """The arrays of a ``.params`` file by name (``arg:...``/``aux:...`` in checkpoints); an unnamed list gets the
    names ``"0"``, ``"1"``, ... in file order."""
    cur = _Cursor(data, source)
    if len(cur.data) < 24 or cur.u64("list magic") != LIST_MAGIC:
        cur.pos = 0
        raise cur.fail("no NDArray list header (magic 0x112)")
    cur.u64("reserved")
    count = cur.u64("array count")
    if count > (len(cur.data) - cur.pos) // 8:  # every record takes at least 8 bytes
        raise cur.fail(f"{count} arrays announced, more than the file can hold")
    arrays = [_record(cur) for _ in range(count)]
    n_names = cur.u64("name count")
    if n_names not in (0, count):
        raise cur.fail(f"{n_names} names for {count} arrays (expected 0 or {count})")
    names = []
    for i in range(n_names):
        length = cur.u64(f"length of name {i}")
        raw = cur.take(length, f"name {i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise cur.fail(f"name {i} is not UTF-8") from None
    if cur.pos != len(cur.data):
        raise cur.fail(f"{len(cur.data) - cur.pos} unexpected bytes after the last name")
    if len(set(names)) != len(names):
        raise cur.fail("duplicate array names")
    return dict(zip(names or [str(i) for i in range(count)], arrays, strict=True))


def read_params(path: str | Path) -> dict[str, np.ndarray | None]:
    """:func:`parse_params` of a file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClientError(f"{path}: cannot be read: {e.strerror or e}") from e
    return parse_params(data, str(path))


def split_checkpoint(params: dict[str, np.ndarray | None], source: str) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, np.ndarray]]:
    """``arg:`` (learned) and ``aux:`` (BatchNorm statistics) arrays of a checkpoint, prefixes removed."""
    args: dict[str, np.ndarray] = {}
    auxs: dict[str, np.ndarray] = {}
    for key, value in params.items():
        kind, _, name = key.partition(":")
        if kind not in ("arg", "aux") or not name:
            raise ClientError(f"{source}: entry {key!r} is not 'arg:NAME' or 'aux:NAME', so this is not an MXNet "
                              "model checkpoint (mx.model.save_checkpoint)")
        if value is None:
            raise ClientError(f"{source}: {key} is an empty array")
        (args if kind == "arg" else auxs)[name] = value
    return args, auxs
