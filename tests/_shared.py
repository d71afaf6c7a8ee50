"""Where the MXNet-written fixtures live, for every test file.

The full set, ``../shared/fixtures`` beside the checkout, when it is there; otherwise the subset shipped in
``tests/data/mxnet`` (its README lists what it holds), so a fresh clone runs the same tests. ``OPENIC_FIXTURES``
names another folder (e.g. ``tests/data/mxnet`` to try the subset where the full set exists).

For what the subset leaves out: :func:`fixture_md5` answers from the subset's ``MD5SUMS`` (a listing of the full
set), and :func:`digits_sources` gives MXNet's source images as far as the fixtures hold them. The whole image
folder, for im2rec, is the session fixture ``digits_images`` in ``conftest.py``.
"""

import errno
import hashlib
import os
from pathlib import Path

import pytest

FULL = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SUBSET = Path(__file__).resolve().parent / "data" / "mxnet"
FIXTURES = Path(os.environ["OPENIC_FIXTURES"]).resolve() if os.environ.get("OPENIC_FIXTURES") else (
    FULL if (FULL / "expected.json").is_file() else SUBSET)
FULL_SET = FIXTURES != SUBSET  # the subset lacks digits/, rec/digits_train.rec/.idx and the 40 MB ResNet-18
EXPECTED = FIXTURES / "expected.json"
needs_fixtures = pytest.mark.skipif(not EXPECTED.is_file(), reason=f"MXNet fixtures not found at {FIXTURES}")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fixture_md5(rel: str) -> str:
    """md5 of a fixture file (``rec/digits_train.rec``, ``digits/3/0003.jpg``): of the file where it is here,
    else as listed in the subset's ``MD5SUMS``."""
    path = FIXTURES / rel
    if path.is_file():
        return _md5(path.read_bytes())
    sums = {}
    for line in (SUBSET / "MD5SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    return sums[rel]


def digits_sources() -> dict[str, bytes]:
    """MXNet's source images, ``{"<class>/<NNNN>.jpg|png": file bytes}``: all 1,797 from the full set's ``digits/``;
    from the subset, the 360 validation images that ``rec_passthrough/digits_val.rec`` stores verbatim
    (``im2rec --pass-through``), named by its ``.lst``."""
    folder = FIXTURES / "digits"
    if folder.is_dir():
        return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*.*"))}
    from openic.formats.lst import read_lst
    from openic.formats.recordio import RecordReader, unpack

    paths = {e.index: e.path for e in read_lst(FIXTURES / "rec_passthrough" / "digits_val.lst")}
    out = {}
    with RecordReader(FIXTURES / "rec_passthrough" / "digits_val.rec") as reader:
        for record, _ in reader.scan():
            header, payload = unpack(record)
            out[paths[header.id]] = payload
    assert len(out) == 360
    return out


class FullDisk:
    """A file on a full disk: writes past ``budget`` bytes fail with ENOSPC, and so do flush and close (a
    buffered file with data it cannot flush fails again on every close)."""

    def __init__(self, f, budget):
        self.f, self.budget = f, budget

    def write(self, data):
        self.budget -= len(data)
        if self.budget < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.f.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        return self.f.fileno()

    @property
    def closed(self):
        return self.f.closed
