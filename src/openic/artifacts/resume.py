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
from openic.errors import AlgorithmError, ClientError
from openic.fileio import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
_CKPT_KEY = "openic_checkpoint"
_TAG = "__openic__"


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
    raise AlgorithmError(f"unknown checkpoint tag {tag!r}")


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


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None,
                    check_state: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore model, optimizer, scaler and RNG states in place; return the ``state`` given to save_checkpoint.

    ``check_state`` sees that ``state`` before anything is restored, so a caller can refuse a checkpoint of
    another run with its own message rather than a weights-shape mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = (f.metadata() or {}).get(_CKPT_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ClientError(f"{path}: not a readable openic checkpoint ({e})") from e
    if header is None:
        raise ClientError(f"{path}: safetensors file without the '{_CKPT_KEY}' header: not an openic checkpoint")
    payload = json.loads(header)
    if int(payload.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise ClientError(f"{path}: checkpoint format_version {payload['format_version']} is newer than "
                          f"{CHECKPOINT_FORMAT_VERSION}; upgrade openic")
    state = _decode(payload["state"], tensors)
    if check_state is not None:
        check_state(state)
    load_state_strict(unwrap_model(model), _decode(payload["model"], tensors), str(path))
    try:
        optimizer.load_state_dict(_decode(payload["optimizer"], tensors))
    except (ValueError, KeyError) as e:
        raise ClientError(f"{path}: optimizer state does not fit this optimizer ({e})") from e
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(_decode(payload["scaler"], tensors))
    elif scaler is not None:
        logger.warning("%s: no grad-scaler state in the checkpoint; the scaler starts fresh", path)
    elif payload["scaler"] is not None:
        logger.warning("%s: the checkpoint's grad-scaler state is ignored (no scaler passed)", path)
    _set_rng_state(_decode(payload["rng"], tensors), str(path))
    return state
