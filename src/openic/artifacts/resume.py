"""Training checkpoints for resume (``checkpoints/last``): one safetensors file, nothing pickled.

A checkpoint is one safetensors file: every tensor (model, optimizer state, RNG states, tensors in the loop's
``state``) is a safetensors entry, and everything else is JSON in the header metadata, so nothing is pickled and
nothing needs ``torch.load``. It is written under a temporary name, fsynced and renamed over the old one, so a
``kill -9`` mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file as st_save_file
from torch import Tensor, nn

from openic.artifacts.state_dict import clean_state_dict, load_state_strict, unwrap_model
from openic.errors import ClientError
from openic.fileio import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
_CKPT_KEY = "openic_checkpoint"
_TAG = "__openic__"
_PARTS = ("state", "model", "optimizer", "scaler", "rng")


class _Encoder:
    """Split a nested state into JSON (returned) and tensors (collected under path-like keys)."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[int] = set()

    def tensor(self, t: Tensor, key: str) -> str:
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.nbytes and ptr in self._storages:  # safetensors refuses tensors that share memory
            t = t.clone()
        self._storages.add(t.untyped_storage().data_ptr())
        while key in self.tensors:
            key += "'"
        self.tensors[key] = t
        return key

    def encode(self, obj: Any, path: str) -> Any:
        if isinstance(obj, Tensor):
            return {_TAG: "tensor", "key": self.tensor(obj, path)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"cannot store an object array at {path!r} in a checkpoint")
            return {_TAG: "ndarray", "key": self.tensor(torch.from_numpy(np.ascontiguousarray(obj)), path)}
        if isinstance(obj, np.generic):
            obj = obj.item()
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {_TAG: "float", "value": repr(obj)}
        if isinstance(obj, (list, tuple)):
            items = [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else {_TAG: "tuple", "items": items}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj) and _TAG not in obj:
                return {k: self.encode(v, f"{path}/{k}") for k, v in obj.items()}
            return {_TAG: "dict", "items": [[self.encode(k, f"{path}/key{i}"), self.encode(v, f"{path}/{k}")]
                                            for i, (k, v) in enumerate(obj.items())]}
        raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint: use tensors, numpy arrays, "
                        "numbers, strings, None and lists/tuples/dicts of them")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if tag == "tensor":
        return tensors[obj["key"]]
    if tag == "ndarray":
        return tensors[obj["key"]].numpy()
    if tag == "float":
        return float(obj["value"])
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in obj["items"])
    if tag == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["items"]}
    raise ValueError(f"unknown checkpoint tag {tag!r}")


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    state["numpy"] = np.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], source: str) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning("%s: saved %d CUDA RNG states but %d devices are visible; CUDA RNG not restored",
                           source, len(state["cuda"]), torch.cuda.device_count())


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None,
                    state: Mapping[str, Any]) -> Path:
    """Write a resumable checkpoint atomically: model, optimizer, scaler, RNG states and ``state``.

    ``state`` holds the loop's own counters (epoch, best accuracy, early-stopping counts, generator states as
    tensors); :func:`load_checkpoint` returns it unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = _Encoder()
    payload = {
        "format": "openic-checkpoint", "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": enc.encode(clean_state_dict(unwrap_model(model).state_dict()), "model"),
        "optimizer": enc.encode(optimizer.state_dict(), "optimizer"),
        "scaler": None if scaler is None else enc.encode(scaler.state_dict(), "scaler"),
        "rng": enc.encode(_rng_state(), "rng"),
        "state": enc.encode(dict(state), "state"),
    }
    with atomic_path(path) as tmp:
        st_save_file(enc.tensors, str(tmp), metadata={_CKPT_KEY: json.dumps(payload, allow_nan=False)})
    logger.debug("saved checkpoint %s (%d tensors)", path, len(enc.tensors))
    return path


def _damaged(path: Path, what: str) -> ClientError:
    return ClientError(f"{path}: {what}; the checkpoint is damaged (truncated?); run again with --no-resume to start "
                       f"over, or delete it")


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON payload (its keys and format version checked) and the tensors of a checkpoint file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = (f.metadata() or {}).get(_CKPT_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise _damaged(path, f"not a readable safetensors file ({e})") from e
    if header is None:
        raise ClientError(f"{path}: a safetensors file without the '{_CKPT_KEY}' header is not an openic checkpoint; "
                          f"run again with --no-resume to start over, or delete it")
    try:
        payload = json.loads(header)
    except (ValueError, RecursionError) as e:
        raise _damaged(path, f"its '{_CKPT_KEY}' header is not valid JSON ({e})") from None
    if not isinstance(payload, dict):
        raise _damaged(path, f"its '{_CKPT_KEY}' header is {type(payload).__name__}, not a JSON object")
    missing = [k for k in ("format_version", *_PARTS) if k not in payload]
    if missing:
        raise _damaged(path, f"its '{_CKPT_KEY}' header lacks {', '.join(missing)}")
    version = payload["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _damaged(path, f"format_version {version!r} is not an integer 1..{CHECKPOINT_FORMAT_VERSION}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise ClientError(f"{path}: checkpoint format_version {version} is newer than "
                          f"{CHECKPOINT_FORMAT_VERSION}; upgrade openic")
    return payload, tensors


def _decode_parts(path: Path, payload: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """Every part decoded and type-checked before anything is restored: a header that does not match its tensors
    changes nothing in the model or optimizer."""
    try:
        parts = {k: _decode(payload[k], tensors) for k in _PARTS}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        raise _damaged(path, f"its header does not match its tensors ({type(e).__name__}: {e})") from None
    model = parts["model"]
    if not (isinstance(model, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in model.items())):
        raise _damaged(path, "its model entry is not a map of tensor names to tensors")
    for key, types in (("state", dict), ("optimizer", dict), ("rng", dict), ("scaler", (dict, type(None)))):
        if not isinstance(parts[key], types):
            raise _damaged(path, f"its {key} entry is {type(parts[key]).__name__}, not a JSON object")
    return parts


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None,
                    check_state: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore model, optimizer, scaler and RNG states in place; return the ``state`` given to save_checkpoint.

    ``check_state`` sees that ``state`` before anything is restored, so a caller can refuse a checkpoint of
    another run with its own message rather than a weights-shape mismatch.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ClientError: naming the file, for a damaged or truncated file (suggesting ``--no-resume``), a newer format,
            or states that do not fit the model, optimizer or scaler given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    parts = _decode_parts(path, *_read_checkpoint(path))
    if check_state is not None:
        check_state(parts["state"])
    load_state_strict(unwrap_model(model), parts["model"], str(path))
    try:
        optimizer.load_state_dict(parts["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise ClientError(f"{path}: optimizer state does not fit this optimizer ({e})") from e
    if scaler is not None and parts["scaler"] is not None:
        try:
            scaler.load_state_dict(parts["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ClientError(f"{path}: grad-scaler state does not fit this scaler ({e})") from e
    elif scaler is not None:
        logger.warning("%s: no grad-scaler state in the checkpoint; the scaler starts fresh", path)
    elif parts["scaler"] is not None:
        logger.warning("%s: the checkpoint's grad-scaler state is ignored (no scaler passed)", path)
    try:
        _set_rng_state(parts["rng"], str(path))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise _damaged(path, f"its RNG states cannot be restored ({type(e).__name__}: {e})") from None
    return parts["state"]
