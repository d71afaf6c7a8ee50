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
import re
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from openic import __version__
from openic.artifacts import mxnet_import
from openic.artifacts.extract import READ_ERRORS
from openic.artifacts.state_dict import check_state_fits, clean_state_dict, unwrap_model
from openic.errors import ClientError, shown
from openic.fileio import atomic_path, os_reason
from openic.formats.tar import MiB, check_member, member_name, read_file, read_member
from openic.hyperparams import parse_image_shape, sagemaker_string
from openic.models.depths import DEPTHS
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
JSON_LIMIT = 16 * MiB  # metadata, hyperparameters, classes, shapes: kilobytes in practice
_HEADER_BYTES = 1 * MiB  # a safetensors header beyond one JSON entry per tensor (__metadata__, padding)
_HEADER_BYTES_PER_TENSOR = 1024  # one '"name":{"dtype":..,"shape":[..],"data_offsets":[..]}' entry is ~120 bytes
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


def save_model(out_dir: Path, model: nn.Module, hp: HyperParameters | Mapping[str, str], *, epoch: int,
               class_names: list[str] | None = None,
               checkpoints: Mapping[int, Mapping[str, Tensor] | Path] | None = None,
               metrics: Mapping[str, float] | None = None, extra_metadata: Mapping[str, Any] | None = None,
               filename: str = MODEL_ARCHIVE) -> Path:
    """Write ``out_dir/model.tar.gz``: weights, shapes, resolved hyperparameters, classes, metadata.

    Args:
        hp: the resolved hyperparameters, or (for an imported model, whose training settings are unknown) the
            string map of those that are known; num_layers, num_classes and image_shape are required either way.
        epoch: 0-based epoch the weights come from (MXNet's ``Epoch[k]``).
        checkpoints: per-epoch weights kept by ``checkpoint_frequency`` (state dicts, or safetensors files that
            are copied as they are, one at a time); each becomes ``image-classification-%04d.safetensors``
            numbered epoch + 1.
        metrics: final metrics (for example ``validation:accuracy``) recorded in ``metadata.json``.
        extra_metadata: more ``metadata.json`` fields (where an imported model came from).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    strings = hp.to_strings() if hasattr(hp, "to_strings") else dict(hp)
    c, h, w = parse_image_shape(strings["image_shape"])
    num_classes = int(strings["num_classes"])
    if class_names is not None and len(class_names) != num_classes:
        raise ClientError(f"{len(class_names)} class names given for num_classes={num_classes}")
    checkpoints = dict(checkpoints or {})
    metadata = {
        "format": "openic-model", "format_version": FORMAT_VERSION,
        "openic_version": __version__,
        "torch_version": torch.__version__, "git_sha": _git_sha(), "num_layers": int(strings["num_layers"]),
        "num_classes": num_classes, "image_shape": [c, h, w], "epoch": int(epoch), "metrics": _finite_or_none(metrics),
        "input": INPUT_SPEC, "weights": WEIGHTS,
        "checkpoints": {str(int(e)): checkpoint_name(int(e)) for e in sorted(checkpoints)},
    } | dict(extra_metadata or {})
    members: dict[str, Callable[[], bytes]] = {
        WEIGHTS: functools.partial(_weights_bytes, unwrap_model(model).state_dict()),
        SHAPES: lambda: json.dumps([{"name": "data", "shape": [1, c, h, w]}]).encode(),
        HYPERPARAMS: functools.partial(_json_bytes, strings),
        METADATA: functools.partial(_json_bytes, metadata),
    }
    if class_names is not None:
        members[CLASSES] = functools.partial(_json_bytes, [str(n) for n in class_names])
    for e, state in checkpoints.items():
        members[checkpoint_name(int(e))] = (state.read_bytes if isinstance(state, Path)
                                            else functools.partial(_weights_bytes, state))
    dest = out_dir / filename
    _write_tar_gz(dest, members)
    logger.info("saved model (epoch %d, %d checkpoints) to %s", epoch, len(checkpoints), dest)
    return dest


def archive_in(path: Path) -> Path:
    """A folder that holds a ``model.tar.gz`` (and is not itself an extracted artifact) stands for that file."""
    if path.is_dir() and (path / MODEL_ARCHIVE).is_file() and not (path / METADATA).exists() and \
            not mxnet_import.is_mxnet([p.name for p in path.iterdir()]):
        return path / MODEL_ARCHIVE
    return path


class _Artifact:
    """A model.tar.gz or extracted model directory, opened to read members by name, each within a byte bound.

    Tar members are read into memory by name (nothing is written to disk, so nothing can escape anywhere), and
    each read is refused from the member's declared size before a byte is decompressed.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model artifact not found: {path}")
        path = archive_in(path)
        self.source = str(path)
        self._dir = path if path.is_dir() else None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if self._dir is not None:
            self.names = sorted(p.name for p in self._dir.iterdir() if p.is_file())
            return
        try:
            self._tar = tarfile.open(path, "r:*")
            for m in self._tar:  # headers only: member data is skipped, not kept
                check_member(m, self.source)
                if m.isfile():
                    self._members[member_name(m)] = m
        except READ_ERRORS as e:
            self.close()
            reason = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__  # tarfile lists each method
            raise ClientError(f"{path}: not a readable model.tar.gz or model directory ({reason})") from e
        except ClientError:
            self.close()
            raise
        self.names = sorted(self._members)

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of member ``name`` (which must be in ``names``), refused when it holds more than ``limit``."""
        if self._dir is not None:
            try:
                return read_file(self._dir / name, limit)
            except OSError as e:  # unreadable, a folder in its place, removed meanwhile
                raise ClientError(f"{self._dir / name} cannot be read: {os_reason(e)}") from e
        assert self._tar is not None
        try:
            return read_member(self._tar, self._members[name], self.source, limit)
        except READ_ERRORS as e:
            raise ClientError(f"{self.source}: member {name!r} cannot be read (damaged archive?): {e}") from e

    def json(self, name: str) -> Any:
        """Member ``name`` parsed as JSON (at most :data:`JSON_LIMIT` bytes); bad JSON names the archive and member."""
        try:
            return json.loads(self.read(name, JSON_LIMIT))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ClientError(f"{self.source}: {name} is not valid UTF-8 JSON ({e})") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> _Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _int_field(meta: Mapping[str, Any], key: str, where: str, valid: str) -> int:
    """An integer of metadata.json; digit strings are accepted as older artifacts wrote ``int(...)``-able values."""
    value = meta[key]
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,18}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ClientError(f"{where}: {key} {shown(meta[key])} is not valid; expected {valid}")
    return value


def _parse_metadata(source: str, raw: Any) -> dict[str, Any]:
    """metadata.json checked field by field, with num_layers/num_classes/image_shape in their typed form."""
    where = f"{source}: {METADATA}"
    if not isinstance(raw, dict):
        raise ClientError(f"{where}: expected a JSON object with format_version, num_layers, num_classes and "
                          f"image_shape, got {type(raw).__name__}")
    missing = [k for k in ("format_version", "num_layers", "num_classes", "image_shape") if k not in raw]
    if missing:
        raise ClientError(f"{where} lacks {', '.join(missing)}")
    version = _int_field(raw, "format_version", where, f"an integer 1..{FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ClientError(f"{source}: format_version {version} is newer than this openic reads "
                          f"({FORMAT_VERSION}); upgrade openic")
    depths = ", ".join(str(d) for d in sorted(DEPTHS))
    num_layers = _int_field(raw, "num_layers", where, f"one of the supported depths {depths}")
    if num_layers not in DEPTHS:
        raise ClientError(f"{where}: num_layers {num_layers} is not valid; expected one of the supported depths "
                          f"{depths}")
    num_classes = _int_field(raw, "num_classes", where, "a positive integer")
    shape = parse_image_shape(raw["image_shape"], where)
    return raw | {"format_version": version, "num_layers": num_layers, "num_classes": num_classes,
                  "image_shape": list(shape)}


def _metadata(art: _Artifact) -> dict[str, Any]:
    """metadata.json, or for SageMaker's own (MXNet) artifacts the same fields derived from the symbol and shapes."""
    if METADATA not in art.names:
        if mxnet_import.is_mxnet(art.names):
            return mxnet_import.read_metadata(art) | {"input": INPUT_SPEC}
        raise ClientError(f"{art.source}: {METADATA} is missing (found: {', '.join(art.names) or 'no files'})")
    return _parse_metadata(art.source, art.json(METADATA))


def _hyperparameters(art: _Artifact) -> dict[str, str]:
    """hyperparameters.json as SageMaker's string map (``sagemaker_string``); absent means none recorded."""
    if HYPERPARAMS not in art.names:
        return {}
    raw = art.json(HYPERPARAMS)
    where = f"{art.source}: {HYPERPARAMS}"
    if not isinstance(raw, dict):
        raise ClientError(f"{where}: expected a JSON object of hyperparameter name -> string, got {shown(raw)}")
    for k, v in raw.items():
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise ClientError(f"{where}: {k} = {shown(v)} is not valid; expected a string (or a number)")
    return {k: sagemaker_string(v) for k, v in raw.items() if v is not None}


def _class_names(art: _Artifact, num_classes: int) -> list[str] | None:
    if CLASSES not in art.names:
        return None
    raw = art.json(CLASSES)
    valid = f"a JSON list of {num_classes} class names (strings), as num_classes in {METADATA} says"
    if not isinstance(raw, list) or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in raw):
        raise ClientError(f"{art.source}: {CLASSES} is {shown(raw)}; expected {valid}")
    if len(raw) != num_classes:
        raise ClientError(f"{art.source}: {CLASSES} has {len(raw)} names but num_classes is {num_classes}; "
                          f"expected {valid}")
    return [str(n) for n in raw]


def _read_weights(art: _Artifact, name: str, meta: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights member, bounded by the size of the model metadata.json describes, checked against its shapes.

    The model is built on the ``meta`` device first (no memory), so neither a member declaring gigabytes nor
    metadata declaring a huge model allocates anything before the weights have been read and found to fit.
    """
    try:
        with torch.device("meta"):
            expected = create_model(meta["num_layers"], meta["num_classes"], tuple(meta["image_shape"])).state_dict()
    except ClientError as e:
        raise ClientError(f"{art.source}: {METADATA} describes no buildable model ({e})") from e
    needed = sum(t.numel() * t.element_size() for t in expected.values())
    state_bytes = art.read(name, needed + _HEADER_BYTES + _HEADER_BYTES_PER_TENSOR * len(expected))
    try:
        state = st_load(state_bytes)
    except SafetensorError as e:
        raise ClientError(f"{art.source}: {name} is not a valid safetensors file ({e})") from e
    check_state_fits(expected, state, f"{art.source}: {name}")
    return state


def read_model_metadata(path: Path) -> dict[str, Any]:
    """``metadata.json`` of an artifact (num_layers, num_classes, image_shape, ...) without building the model."""
    with _Artifact(Path(path)) as art:
        return _metadata(art)


def load_model(path: Path, *, device: str | torch.device = "cpu", checkpoint_epoch: int | None = None) -> LoadedModel:
    """Rebuild the model of a ``model.tar.gz`` (or its extracted directory, or a directory holding it).

    Args:
        checkpoint_epoch: 0-based epoch of a ``checkpoint_frequency`` checkpoint to load instead of the final weights.

    Raises:
        ClientError: naming the artifact and the member for anything malformed, oversized or not fitting.
    """
    weights = WEIGHTS if checkpoint_epoch is None else checkpoint_name(checkpoint_epoch)
    with _Artifact(Path(path)) as art:
        meta = _metadata(art)
        hyper = _hyperparameters(art) | meta.get("hyperparameters", {})  # an MXNet model's derived values win
        class_names = _class_names(art, meta["num_classes"])
        if meta.get("format") == mxnet_import.FORMAT:
            state = mxnet_import.read_state(art, meta, checkpoint_epoch)
        elif weights not in art.names:
            stored = sorted(int(m.group(1)) - 1 for n in art.names if (m := _CHECKPOINT_RE.fullmatch(n)))
            what = "final weights" if checkpoint_epoch is None else f"checkpoint of epoch {checkpoint_epoch}"
            raise ClientError(f"{art.source}: {weights} is missing, so there are no {what} (checkpoint epochs "
                              f"stored: {stored or 'none'})")
        else:
            state = _read_weights(art, weights, meta)
    model = create_model(meta["num_layers"], meta["num_classes"], tuple(meta["image_shape"]))
    model.load_state_dict(state, strict=True)
    return LoadedModel(model=model.to(device).eval(), metadata=meta, class_names=class_names, hyperparameters=hyper)


def load_mxnet_weights(path: Path, image_shape: tuple[int, int, int], prefix: str | None = None,
                       params: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Metadata and openic weights of an MXNet checkpoint for this input shape: a SageMaker artifact, or a folder
    of ``PREFIX-symbol.json`` + ``PREFIX-NNNN.params`` such as MXNet's ImageNet models (no ``model-shapes.json``).

    Args:
        params: that ``.params`` file of the folder rather than the one with the highest NNNN.
    """
    with _Artifact(Path(path)) as art:
        meta = mxnet_import.read_metadata(art, image_shape, prefix)
        if params is not None:
            meta = meta | {"mxnet": meta["mxnet"] | {"params": params}}
        return meta, mxnet_import.read_state(art, meta)


def artifact_format(path: Path) -> str:
    """``openic-model``, or ``sagemaker-mxnet`` for SageMaker's own artifacts and MXNet checkpoints (listing only)."""
    with _Artifact(Path(path)) as art:
        return mxnet_import.FORMAT if METADATA not in art.names and mxnet_import.is_mxnet(art.names) else "openic-model"
