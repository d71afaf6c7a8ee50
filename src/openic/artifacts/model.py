"""Model artifacts: safetensors weights plus JSON that describes them, no pickle anywhere.

``model.tar.gz`` keeps SageMaker's outline (``model-shapes.json`` at the root, per-epoch checkpoints named
``image-classification-%04d``) but stores safetensors weights and a ``metadata.json`` that says how to rebuild the
network, so :func:`load_model` needs nothing else and no loader strips ``module.``/``_orig_mod.``.
Training checkpoints for resume live in :mod:`openic.artifacts.resume` and are re-exported here.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import math
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from openic import __version__
from openic.artifacts.state_dict import clean_state_dict, load_state_strict, unwrap_model
from openic.errors import ClientError
from openic.fileio import atomic_path
from openic.models.resnet import create_model

if TYPE_CHECKING:
    from openic.hyperparams import HyperParameters

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_ARCHIVE = "model.tar.gz"
WEIGHTS = "model.safetensors"
SHAPES = "model-shapes.json"
HYPERPARAMS = "hyperparameters.json"
CLASSES = "classes.json"
METADATA = "metadata.json"
MXNET_SYMBOL = "image-classification-symbol.json"
_CHECKPOINT_RE = re.compile(r"image-classification-(\d{4,})\.safetensors")
# What the network expects: SageMaker's network normalises inside (bn_data), so callers feed raw pixels.
INPUT_SPEC: dict[str, Any] = {
    "layout": "NCHW", "channel_order": "RGB", "dtype": "float32", "value_range": [0, 255], "mean": None,
    "std": None, "note": "raw 0..255 pixels, no external mean/std: the network's first layer bn_data normalises",
}


@dataclass
class LoadedModel:
    """A model rebuilt from an artifact, in eval mode, with everything the artifact says about itself."""

    model: nn.Module
    hyperparameters: dict[str, str]
    metadata: dict[str, Any]
    class_names: list[str] | None


def checkpoint_name(epoch: int) -> str:
    """SageMaker names a checkpoint after the epoch count (0-based epoch + 1), as MXNet's ``-%04d.params``."""
    return f"image-classification-{epoch + 1:04d}.safetensors"


def _image_shape(value: Any) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    if len(shape) != 3:
        raise ClientError(f"image_shape must be C,H,W (3 numbers), got {value!r}")
    return shape  # type: ignore[return-value]


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _finite_or_none(metrics: Mapping[str, float] | None) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in (metrics or {}).items()}


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    """The commit of the openic checkout this code runs from; None when not in a git checkout (best effort)."""
    here = Path(__file__).resolve()
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=here.parent,
                                 capture_output=True, timeout=5, check=False)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here.parent, capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = head.stdout.strip()
    return sha if tracked.returncode == 0 and head.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def _write_tar_gz(dest: Path, members: Mapping[str, Callable[[], bytes]]) -> None:
    """Deterministic archive: sorted names, mtime 0, owner 0, gzip header without time or name."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as raw:
        # Float weights barely compress; level 1 is several times faster than 9 for a file ~1% larger.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name in sorted(members):
                    data = members[name]()  # built one at a time so only one serialized state dict is in memory
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
                        len(data), 0o644, 0, 0, 0, "", "")
                    tar.addfile(info, io.BytesIO(data))


def _weights_bytes(state: Mapping[str, Tensor]) -> bytes:
    return st_save(clean_state_dict(state))


def save_model(out_dir: Path, model: nn.Module, hp: HyperParameters, *, epoch: int,
               class_names: list[str] | None = None,
               checkpoints: Mapping[int, Mapping[str, Tensor] | Path] | None = None,
               metrics: Mapping[str, float] | None = None) -> Path:
    """Write ``out_dir/model.tar.gz``: weights, shapes, resolved hyperparameters, classes, metadata.

    Args:
        epoch: 0-based epoch the weights come from (MXNet's ``Epoch[k]``).
        checkpoints: per-epoch weights kept by ``checkpoint_frequency`` (state dicts, or safetensors files that
            are copied as they are, one at a time); each becomes ``image-classification-%04d.safetensors``
            numbered epoch + 1.
        metrics: final metrics (for example ``validation:accuracy``) recorded in ``metadata.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c, h, w = _image_shape(hp.image_shape)
    num_classes = int(hp.num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ClientError(f"{len(class_names)} class names given for num_classes={num_classes}")
    checkpoints = dict(checkpoints or {})
    metadata = {
        "format": "openic-model", "format_version": FORMAT_VERSION,
        "openic_version": __version__,
        "torch_version": torch.__version__, "git_sha": _git_sha(), "num_layers": int(hp.num_layers),
        "num_classes": num_classes, "image_shape": [c, h, w], "epoch": int(epoch), "metrics": _finite_or_none(metrics),
        "input": INPUT_SPEC, "weights": WEIGHTS,
        "checkpoints": {str(int(e)): checkpoint_name(int(e)) for e in sorted(checkpoints)},
    }
    members: dict[str, Callable[[], bytes]] = {
        WEIGHTS: functools.partial(_weights_bytes, unwrap_model(model).state_dict()),
        SHAPES: lambda: json.dumps([{"name": "data", "shape": [1, c, h, w]}]).encode(),
        HYPERPARAMS: functools.partial(_json_bytes, hp.to_strings()),
        METADATA: functools.partial(_json_bytes, metadata),
    }
    if class_names is not None:
        members[CLASSES] = functools.partial(_json_bytes, [str(n) for n in class_names])
    for e, state in checkpoints.items():
        members[checkpoint_name(int(e))] = (state.read_bytes if isinstance(state, Path)
                                            else functools.partial(_weights_bytes, state))
    dest = out_dir / MODEL_ARCHIVE
    _write_tar_gz(dest, members)
    logger.info("saved model (epoch %d, %d checkpoints) to %s", epoch, len(checkpoints), dest)
    return dest


def _read_artifact(path: Path, wanted: Callable[[str], bool]) -> tuple[str, list[str], dict[str, bytes]]:
    """(source, all file names, bytes of the wanted ones) from a model.tar.gz or an extracted directory.

    Reads tar members into memory by name, so nothing is written to disk and no member can escape anywhere.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model artifact not found: {path}")
    if path.is_dir() and not (path / METADATA).exists() and (path / MODEL_ARCHIVE).is_file():
        path = path / MODEL_ARCHIVE
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_file())
        return str(path), names, {n: (path / n).read_bytes() for n in names if wanted(n)}
    try:
        with tarfile.open(path, "r:*") as tar:
            names, data = [], {}
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isfile():
                    names.append(name)
                    if wanted(name):
                        data[name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ClientError(f"{path}: not a readable model.tar.gz or model directory ({e})") from e
    return str(path), sorted(names), data


def _parse_metadata(source: str, names: list[str], data: Mapping[str, bytes]) -> dict[str, Any]:
    if METADATA not in data:
        if MXNET_SYMBOL in names:
            raise ClientError(f"{source}: this is a SageMaker/MXNet model ({MXNET_SYMBOL}, .params), not an openic "
                              f"artifact ({METADATA} + {WEIGHTS}); importing SageMaker/MXNet artifacts is not "
                              f"supported yet")
        raise ClientError(f"{source}: {METADATA} is missing (found: {', '.join(names) or 'no files'})")
    try:
        meta = json.loads(data[METADATA])
    except ValueError as e:
        raise ClientError(f"{source}: {METADATA} is not valid JSON ({e})") from e
    missing = [k for k in ("format_version", "num_layers", "num_classes", "image_shape") if k not in meta]
    if missing:
        raise ClientError(f"{source}: {METADATA} lacks {', '.join(missing)}")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise ClientError(f"{source}: format_version {meta['format_version']} is newer than this openic reads "
                          f"({FORMAT_VERSION}); upgrade openic")
    return meta


def read_model_metadata(path: Path) -> dict[str, Any]:
    """``metadata.json`` of an artifact (num_layers, num_classes, image_shape, ...) without building the model."""
    source, names, data = _read_artifact(Path(path), lambda n: n == METADATA)
    return _parse_metadata(source, names, data)


def _as_sagemaker_string(value: Any) -> str:
    """The string SageMaker would pass, as ``HyperParameters.to_strings`` writes it (floats keep full precision)."""
    return repr(value) if isinstance(value, float) else str(value)


def load_model(path: Path, *, device: str | torch.device = "cpu", checkpoint_epoch: int | None = None) -> LoadedModel:
    """Rebuild the model of a ``model.tar.gz`` (or its extracted directory, or a directory holding it).

    Args:
        checkpoint_epoch: 0-based epoch of a ``checkpoint_frequency`` checkpoint to load instead of the final weights.
    """
    weights = WEIGHTS if checkpoint_epoch is None else checkpoint_name(checkpoint_epoch)
    wanted = {METADATA, HYPERPARAMS, CLASSES, weights}
    source, names, data = _read_artifact(Path(path), lambda n: n in wanted)
    meta = _parse_metadata(source, names, data)
    if weights not in data:
        stored = sorted(int(m.group(1)) - 1 for n in names if (m := _CHECKPOINT_RE.fullmatch(n)))
        what = "final weights" if checkpoint_epoch is None else f"checkpoint of epoch {checkpoint_epoch}"
        raise ClientError(f"{source}: {weights} is missing, so there are no {what} (checkpoint epochs stored: "
                          f"{stored or 'none'})")
    try:
        model = create_model(int(meta["num_layers"]), int(meta["num_classes"]), _image_shape(meta["image_shape"]))
    except ValueError as e:
        raise ClientError(f"{source}: {METADATA} describes no buildable model ({e})") from e
    try:
        state = st_load(data[weights])
    except SafetensorError as e:
        raise ClientError(f"{source}: {weights} is not a valid safetensors file ({e})") from e
    load_state_strict(model, state, f"{source}: {weights}")
    class_names = None
    if CLASSES in data:
        class_names = [str(n) for n in json.loads(data[CLASSES])]
        if len(class_names) != int(meta["num_classes"]):
            raise ClientError(f"{source}: {CLASSES} has {len(class_names)} names but num_classes is "
                              f"{meta['num_classes']}")
    hyper = json.loads(data[HYPERPARAMS]) if HYPERPARAMS in data else {}
    return LoadedModel(model=model.to(device).eval(), metadata=meta, class_names=class_names,
                       hyperparameters={k: _as_sagemaker_string(v) for k, v in hyper.items() if v is not None})


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(m: tarfile.TarInfo, root: str) -> None:
    """Refuse a member that could write or point outside ``root``; checked again on disk as links appear."""
    def refuse(why: str) -> ClientError:
        return ClientError(f"refusing tar member {m.name!r}: {why}")

    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise refuse("device files, FIFOs and other special files are not allowed")
    if m.name.startswith(("/", "\\")) or PurePosixPath(m.name).is_absolute() or re.match(r"[A-Za-z]:", m.name):
        raise refuse("absolute path")
    if ".." in PurePosixPath(m.name).parts:
        raise refuse("'..' in path")
    if not _within(root, os.path.realpath(os.path.join(root, m.name))):
        raise refuse("resolves outside the destination")
    if m.issym() or m.islnk():
        if os.path.isabs(m.linkname):
            raise refuse(f"link to absolute path {m.linkname!r}")
        base = os.path.join(root, os.path.dirname(m.name)) if m.issym() else root
        if not _within(root, os.path.realpath(os.path.join(base, m.linkname))):
            raise refuse(f"link target {m.linkname!r} is outside the destination")


def safe_extract(tar_path: Path, dest: Path) -> list[Path]:
    """Extract an archive into ``dest``, refusing (before writing anything) members that would escape it.

    Returns the extracted paths in archive order.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise FileNotFoundError(f"archive not found: {tar_path}")
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, root)
            for m in members:
                _check_member(m, root)  # again: links extracted so far may redirect paths
                tar.extract(m, root, **extra)
    except (tarfile.TarError, EOFError) as e:
        raise ClientError(f"{tar_path}: cannot extract ({e})") from e
    return [Path(root, m.name) for m in members]
