"""Session-wide test data built with openic's own writers, so the suite needs nothing beside the checkout.

* ``digits_set``: ``make_digits`` at the default seed (from the vendored digits CSV): ``digits_{train,val}.rec/.idx/
  .lst`` byte-identical with the ones MXNet's im2rec wrote (``test_datasets_cli`` checks), plus the images.
* ``digits_images``: the 1,797 source images as im2rec saw them, for tests that pack or list them.
* ``small``: small RecordIO channels for the training engine: 96 train / 48 validation digits cut from
  ``digits_set``, and 64 multi-hot records (flag 10, ten labels) written with ``pack``.
* ``s3_server`` / ``s3_env`` (from ``s3_helpers``): a moto S3 server in this process, and an environment pointing
  boto3 at it with a fresh bucket.
"""

from pathlib import Path

import pytest
from _shared import FIXTURES, digits_sources
from s3_helpers import s3_env, s3_server  # noqa: F401  (fixtures: a moto S3 server and an environment for it)

from openic.formats.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack
from openic.prep.samples import DatasetInfo, make_digits, write_digits_images


def cut_rec(src: Path, dst: Path, start: int, count: int) -> Path:
    """Records ``start .. start+count-1`` of ``src`` into ``dst`` (with an ``.idx``), keys kept."""
    with RecordReader(src) as reader, RecordWriter(dst, dst.with_suffix(".idx")) as writer:
        for i, (record, _) in enumerate(reader.scan()):
            if start <= i < start + count:
                writer.write(record, key=i)
    return dst


def multi_hot_rec(src: Path, dst: Path, count: int) -> Path:
    """The first ``count`` images of ``src`` re-labelled multi-hot over 10 classes (the digit d and (3d + 1) % 10),
    packed like ``im2rec --pack-label``: flag 10, header label 0, ten float32 labels before the image."""
    with RecordReader(src) as reader, RecordWriter(dst, dst.with_suffix(".idx")) as writer:
        for i, (record, _) in enumerate(reader.scan()):
            if i == count:
                break
            header, payload = unpack(record)
            digit = int(header.label)
            labels = tuple(float(c in (digit, (3 * digit + 1) % 10)) for c in range(10))
            writer.write(pack(IRHeader(10, labels, header.id, 0), payload), key=i)
    return dst


@pytest.fixture(scope="session")
def digits_set(tmp_path_factory) -> DatasetInfo:
    """``make_digits`` output (1,437 train / 360 validation images); read it, never write into it."""
    return make_digits(tmp_path_factory.mktemp("digits_set"))


@pytest.fixture(scope="session")
def digits_images(tmp_path_factory) -> Path:
    """The folder of 1,797 source images ``<class>/<NNNN>.jpg|png`` that MXNet's im2rec packed.

    The full fixture set's ``digits/`` when present. Otherwise openic renders them (``write_digits_images``:
    pixel-identical with MXNet's sources, though not byte-identical: another JPEG/PNG encoder) and the 360
    validation images are replaced by MXNet's own bytes from ``rec_passthrough/digits_val.rec``, so both
    re-encoding and pass-through packing reproduce MXNet's files byte for byte.
    """
    if (FIXTURES / "digits").is_dir():
        return FIXTURES / "digits"
    sources = digits_sources()
    root = tmp_path_factory.mktemp("digits_images") / "digits"
    assert write_digits_images(root) == 1797
    for rel, data in sources.items():
        assert (root / rel).is_file(), rel
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def small(tmp_path_factory, digits_set) -> dict[str, Path]:
    """``{"train": 96 digits, "val": 48 digits, "ml": 64 multi-hot records}`` as ``.rec`` + ``.idx``."""
    d = tmp_path_factory.mktemp("small")
    return {"train": cut_rec(digits_set.train_rec, d / "train.rec", 0, 96),
            "val": cut_rec(digits_set.val_rec, d / "val.rec", 0, 48),
            "ml": multi_hot_rec(digits_set.train_rec, d / "ml.rec", 64)}

