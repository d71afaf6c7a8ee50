"""Ready-made data sets as RecordIO: scikit-learn's digits (vendored, offline) and CIFAR-10 (downloaded).

* :func:`make_digits` renders the 1,797 8x8 digits as 32x32 RGB images into ``DIR/images/<class>/<NNNN>.jpg``
  exactly as the MXNet fixtures were made, lists them with MXNet's shuffle and split, and packs the lists
  with :mod:`openic.prep.im2rec` (JPEG quality 95), so with the default seed the outputs equal MXNet's own.
* :func:`make_cifar10` downloads the Toronto python tarball (md5-checked) and converts it, or fetches the two
  ``.rec`` files MXNet publishes (the SageMaker workshop's data) and checks them by reading every record.

Every output appears atomically (``.partial``/``.part`` files renamed into place); re-running into the same
folder re-uses verified downloads and overwrites everything else. No torch here.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import random
import shutil
import sys
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from openic.errors import ClientError, DataError
from openic.formats.images import encode_image
from openic.formats.lst import classes_path as classes_sidecar
from openic.formats.lst import write_classes, write_lst
from openic.formats.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack
from openic.formats.tar import MiB, check_member, member_name, read_member
from openic.prep.download import download
from openic.prep.im2rec import PackOptions, pack_lst
from openic.prep.im2rec_list import list_images

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MXNET_URL = "http://data.mxnet.io/data/cifar10/"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SOURCES = ("toronto", "mxnet")
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_PNG_EVERY = 180  # digits: every 180th image is a PNG, like the fixtures (indices 0, 180, ..., 1620)


@dataclass(frozen=True)
class DatasetInfo:
    """What a ``make_*`` function wrote: the two splits' ``.rec`` files (``.idx`` beside them) and the classes."""

    name: str
    root: Path
    classes: tuple[str, ...]
    classes_path: Path
    train_rec: Path
    val_rec: Path
    num_train: int
    num_val: int
    val_split: str = "val"  # the held-out split's name in the files: "val", or "test" for Toronto's CIFAR-10
    train_lst: Path | None = None
    val_lst: Path | None = None
    image_dir: Path | None = None

    @property
    def train_idx(self) -> Path:
        return self.train_rec.with_suffix(".idx")

    @property
    def val_idx(self) -> Path:
        return self.val_rec.with_suffix(".idx")

    def summary(self) -> str:
        """A few lines for people: counts per split, classes, paths."""
        lines = [
            f"{self.name}: {self.num_train + self.num_val} images, {len(self.classes)} classes "
            f"({', '.join(self.classes)})",
            f"  {'train':<10s}  {self.num_train:6d}  {self.train_rec}",
            f"  {self.val_split:<10s}  {self.num_val:6d}  {self.val_rec}",
            f"  classes     {self.classes_path}",
        ]
        if self.train_lst is not None and self.val_lst is not None:
            lines.append(f"  lists       {self.train_lst}, {self.val_lst}")
        if self.image_dir is not None:
            lines.append(f"  images      {self.image_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- digits


def digits_image(pixels: np.ndarray, label: int) -> np.ndarray:
    """One sklearn digit (8x8, values 0..16) as the fixtures' 32x32 RGB: R = v, G = 255 - v, B = v/2 + 20*label.

    ``v`` is the image scaled to 0..255 (rounded half to even), upscaled with Pillow's bilinear filter. The
    channels differ on purpose: an RGB/BGR mix-up anywhere downstream changes every pixel.
    """
    v8 = np.round(np.asarray(pixels, dtype=np.float64) * 255 / 16).clip(0, 255).astype(np.uint8)
    v = np.asarray(Image.fromarray(v8).resize((32, 32), Image.BILINEAR)).astype(np.float64)
    blue = np.clip(np.round(v / 2) + 20 * label, 0, 255)
    return np.stack([v, 255 - v, blue], axis=-1).astype(np.uint8)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``(images, target)``: float64 ``(1797, 8, 8)`` values 0..16 and int64 classes 0..9.

    Parsed from the vendored copy of scikit-learn's ``digits.csv.gz`` (``prep/data``, BSD-3-Clause) exactly as
    ``sklearn.datasets.load_digits()`` parses it (``np.loadtxt``, last column the class), so values and order
    equal its ``images`` and ``target`` without scikit-learn or scipy installed.
    """
    source = resources.files("openic.prep") / "data" / "digits.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _replace_dir(built: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the new one is there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(built, final)
    if old.exists():
        shutil.rmtree(old)


def write_digits_images(image_dir: str | os.PathLike[str]) -> int:
    """Render all digits to ``image_dir/<class>/<NNNN>.jpg`` (JPEG q85; every 180th a PNG); returns the count.

    The folder is built beside its final place and swapped in, so it never holds a mix of two runs.
    """
    final = Path(image_dir)
    images, targets = load_digits()
    built = final.with_name(final.name + ".partial")
    if built.exists():
        shutil.rmtree(built)
    for label in sorted(set(int(t) for t in targets)):
        (built / str(label)).mkdir(parents=True)
    for i, (pixels, label) in enumerate(zip(images, targets, strict=True)):
        rgb = digits_image(pixels, int(label))
        ext = ".png" if i % _PNG_EVERY == 0 else ".jpg"
        quality = 9 if ext == ".png" else 85  # PNG: zlib level
        (built / str(int(label)) / f"{i:04d}{ext}").write_bytes(encode_image(rgb, ext, quality))
    _replace_dir(built, final)
    return len(targets)


def make_digits(
    root: str | os.PathLike[str], *, seed: int = 100, train_ratio: float = 0.8, progress: bool = False
) -> DatasetInfo:
    """Build the digits data set under ``root``: images, ``digits_{train,val}.lst/.rec/.idx``, classes file.

    Args:
        root: output folder (created). ``root/images`` is replaced on every run.
        seed: shuffle seed; MXNet's im2rec always uses 100 (``random.seed(100)`` then ``random.shuffle``).
        train_ratio: fraction of the shuffled list that goes to training (MXNet: ``int(n * ratio)`` images).
        progress: show a progress bar while packing.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ClientError(f"train_ratio must be strictly between 0 and 1 (both splits need images), got {train_ratio}")
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    image_dir = out / "images"
    write_digits_images(image_dir)
    entries, classes = list_images(image_dir, recursive=True, exts=(".jpg", ".png"))
    random.Random(seed).shuffle(entries)
    sep = int(len(entries) * train_ratio)
    if sep == 0 or sep == len(entries):
        raise ClientError(f"train_ratio {train_ratio} leaves one split of {len(entries)} images empty")
    prefix = out / "digits"
    splits = {"train": entries[:sep], "val": entries[sep:]}
    classes_path = write_classes(classes_sidecar(prefix), classes)
    options = PackOptions(progress=progress)  # im2rec's defaults: decode, re-encode JPEG quality 95
    for split, chunk in splits.items():
        lst = Path(f"{prefix}_{split}.lst")
        write_lst(lst, chunk)
        pack_lst(lst, image_dir, Path(f"{prefix}_{split}"), options)
    info = DatasetInfo(
        name="digits",
        root=out,
        classes=tuple(classes),
        classes_path=classes_path,
        train_rec=Path(f"{prefix}_train.rec"),
        val_rec=Path(f"{prefix}_val.rec"),
        num_train=len(splits["train"]),
        num_val=len(splits["val"]),
        train_lst=Path(f"{prefix}_train.lst"),
        val_lst=Path(f"{prefix}_val.lst"),
        image_dir=image_dir,
    )
    log.info("digits: %d train, %d val images in %s", info.num_train, info.num_val, out)
    return info


def _url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


# --------------------------------------------------------------------------- CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """Loads the CIFAR-10 batches without letting them name arbitrary callables.

    The batches are Python 2 pickles of plain dicts, lists, strings and ints, except ``data``: a uint8 numpy
    array, which a pickle rebuilds by calling ``numpy.core.multiarray._reconstruct`` with ``numpy.ndarray``
    and a ``numpy.dtype``. Those three globals (and numpy 2's ``numpy._core`` spelling of the first) are the
    only ones allowed; anything else, e.g. ``os.system``, is refused before it is called.
    """

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],  # type: ignore[index]
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],  # type: ignore[index]
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        return self._ALLOWED[(module, name)]


def _unpickle(data: bytes, where: str) -> dict[str, object]:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a hostile or damaged pickle can raise nearly anything; report it as bad data
        raise DataError(f"{where}: not a CIFAR-10 batch: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar10_tarball(tar_path: str | os.PathLike[str]) -> tuple[list[str], dict[str, tuple[np.ndarray, list[int]]]]:
    """Class names and ``{"train": (images, labels), "test": ...}`` (NxHxWx3 uint8 RGB) from the python tarball.

    The archive is read in one pass without extracting anything; every member is still checked
    (:func:`openic.formats.tar.check_member`: no link, device, absolute path or ``..``) and each wanted one is read
    within 64 MiB, so a damaged or hostile tarball is refused as a whole, not half-read.
    """
    path = Path(tar_path)
    wanted = {f"{_CIFAR_DIR}/{n}" for n in (*_CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta")}
    found: dict[str, bytes] = {}
    limit = 64 * MiB  # a batch pickle is ~31 MB (10,000 x 3,072 bytes + labels)
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                check_member(member, path)
                name = member_name(member)
                if name in wanted and member.isfile():
                    found[name] = read_member(tar, member, path, limit)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .tar.gz: {e}") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (not the CIFAR-10 python version?)")
    meta = _unpickle(found[f"{_CIFAR_DIR}/batches.meta"], f"{path}:batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]  # type: ignore[attr-defined]
    if not names:
        raise DataError(f"{path}:batches.meta: no label_names")
    batches = {
        n: _batch(found[f"{_CIFAR_DIR}/{n}"], f"{path}:{n}", len(names)) for n in (*_CIFAR_TRAIN_BATCHES, "test_batch")
    }
    train = [batches[n] for n in _CIFAR_TRAIN_BATCHES]
    splits = {
        "train": (np.concatenate([b[0] for b in train]), [label for b in train for label in b[1]]),
        "test": batches["test_batch"],
    }
    return names, splits


def _batch(data: bytes, where: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One batch as NxHxWx3 RGB: each row is 1024 R, then 1024 G, then 1024 B values, row-major 32x32."""
    d = _unpickle(data, where)
    pixels, labels = d.get("data"), d.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if not isinstance(labels, list) or len(labels) != len(pixels):
        raise DataError(f"{where}: 'labels' must be a list of {len(pixels)} class ids")
    bad = [x for x in labels if not isinstance(x, int) or not 0 <= x < num_classes]
    if bad:
        raise DataError(f"{where}: label {bad[0]!r} is not a class id in 0..{num_classes - 1}")
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _write_rec(rec: Path, images: np.ndarray, labels: list[int], encoding: str, progress: bool) -> None:
    """Records keyed 0..N-1 (header id = key, label = class id), images encoded as ``encoding``."""
    quality = 9 if encoding == ".png" else 95  # PNG: zlib level; JPEG: im2rec's default
    with RecordWriter(rec, rec.with_suffix(".idx")) as writer:
        for i in tqdm(range(len(labels)), desc=rec.name, unit="img", file=sys.stderr, disable=not progress):
            payload = encode_image(np.ascontiguousarray(images[i]), encoding, quality)
            writer.write(pack(IRHeader(0, float(labels[i]), i, 0), payload), key=i)


def _check_rec(path: Path, num_classes: int = len(CIFAR10_CLASSES)) -> None:
    """Read every record of a downloaded ``.rec``: framing, image header, and a class id label."""
    with RecordReader(path, idx_path=None) as reader:
        count = 0
        for record, span in reader.scan():
            header, payload = unpack(record)
            if header.flag != 0 or not float(header.label).is_integer() or not 0 <= header.label < num_classes:
                raise DataError(f"{path}: record at offset {span.offset} has label {header.label!r}, not a class id")
            if not payload:
                raise DataError(f"{path}: record at offset {span.offset} holds no image")
            count += 1
    if count == 0:
        raise DataError(f"{path}: no records")


def make_cifar10(
    root: str | os.PathLike[str],
    *,
    source: str = "toronto",
    url: str | None = None,
    md5: str = CIFAR10_MD5,
    encoding: str = ".png",
    progress: bool = True,
) -> DatasetInfo:
    """Download CIFAR-10 into ``root`` as ``cifar10_train.rec`` plus ``cifar10_test.rec`` (or ``_val``).

    Args:
        root: output folder (created); downloads stay there and are re-used by later runs.
        source: ``toronto``: the python tarball (md5-checked), converted with PNG images by default, so pixels
            are exactly the originals (MXNet's own CIFAR-10 ``.rec`` files hold JPEGs); train = the five data
            batches in order, test = the test batch; labels = class ids in ``batches.meta`` order.
            ``mxnet``: ``cifar10_train.rec``/``cifar10_val.rec`` as published (no checksum exists, so every
            record is read before the file is accepted); an ``.idx`` is built for each.
        url: base URL replacing the source's (mirrors, tests).
        md5: expected md5 of the tarball (``toronto`` only).
        encoding: ``.png`` or ``.jpg`` (quality 95) for converted images.
        progress: progress bars on stderr.
    """
    if source not in CIFAR10_SOURCES:
        raise ClientError(f"unknown CIFAR-10 source {source!r}; valid: {', '.join(CIFAR10_SOURCES)}")
    if encoding not in (".png", ".jpg"):
        raise ClientError(f"encoding {encoding!r} is not one of .png, .jpg")
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    classes_path = classes_sidecar(out / "cifar10")
    if source == "mxnet":
        counts = {}
        for split in ("train", "val"):
            rec = download(
                _url(url or CIFAR10_MXNET_URL, f"cifar10_{split}.rec"),
                out / f"cifar10_{split}.rec",
                verify=_check_rec,
                progress=progress,
            )
            with RecordReader(rec) as reader:
                counts[split] = len(reader.build_index())
        classes, val_split = list(CIFAR10_CLASSES), "val"
    else:
        tarball = download(_url(url or CIFAR10_URL, CIFAR10_TARBALL), out / CIFAR10_TARBALL, md5=md5, progress=progress)
        classes, splits = read_cifar10_tarball(tarball)
        counts = {}
        for split, (images, labels) in splits.items():
            _write_rec(out / f"cifar10_{split}.rec", images, labels, encoding, progress)
            counts[split] = len(labels)
        val_split = "test"
    write_classes(classes_path, classes)
    info = DatasetInfo(
        name="cifar10",
        root=out,
        classes=tuple(classes),
        classes_path=classes_path,
        train_rec=out / "cifar10_train.rec",
        val_rec=out / f"cifar10_{val_split}.rec",
        num_train=counts["train"],
        num_val=counts[val_split],
        val_split=val_split,
    )
    log.info("cifar10 (%s): %d train, %d %s images in %s", source, info.num_train, info.num_val, val_split, out)
    return info
