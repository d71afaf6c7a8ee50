"""SageMaker's own image-classification artifacts (MXNet symbol JSON + ``.params``) read as openic models.

A SageMaker ``model.tar.gz`` holds ``image-classification-symbol.json``, ``image-classification-NNNN.params``
(NNNN = epochs trained) and ``model-shapes.json``; MXNet's published ImageNet checkpoints are ``resnet-18-symbol.json``
+ ``resnet-18-0000.params`` without shapes. Both describe MXNet's ``symbols/resnet.py``: the symbol gives the layout
(matched against openic's depth table), the ``.params`` file the weights, mapped by name onto openic's ResNet, which
mirrors MXNet's names (:func:`openic.models.resnet.mxnet_name_map`). MXNet is never imported, nothing is unpickled.

This module reads through any object with ``names``, ``source``, ``read(name, limit)`` and ``json(name)`` (the
artifact reader of :mod:`openic.artifacts.model`, which calls in here), so it does not import that module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from openic.errors import ClientError, shown
from openic.formats.mxnet_params import parse_params, split_checkpoint
from openic.formats.mxnet_symbol import ResNetGraph, parse_symbol, resnet_graph
from openic.formats.tar import MiB
from openic.hyperparams import parse_image_shape
from openic.models.depths import DEPTHS, SMALL_STEM_MAX_HEIGHT, Layout
from openic.models.resnet import create_model, mxnet_name_map

FORMAT = "sagemaker-mxnet"
SYMBOL_SUFFIX = "-symbol.json"
SHAPES = "model-shapes.json"
PARAMS_RE = re.compile(r"(.+)-(\d{4,9})\.params")
_BN_DATA_GAMMA = "bn_data.weight"  # fix_gamma=True: MXNet's forward uses 1 whatever the file stores


class ArtifactReader(Protocol):
    names: list[str]
    source: str

    def read(self, name: str, limit: int) -> bytes: ...

    def json(self, name: str) -> Any: ...


@dataclass(frozen=True)
class MXNetFiles:
    """The checkpoint files of one prefix: the symbol and the ``.params`` file of every stored epoch count."""

    symbol: str
    params: dict[int, str]  # NNNN (epochs trained) -> member name

    @property
    def last(self) -> int:
        return max(self.params)


def is_mxnet(names: list[str]) -> bool:
    """Whether a listing holds an MXNet checkpoint (a ``*-symbol.json``)."""
    return any(n.endswith(SYMBOL_SUFFIX) for n in names)


def find_files(names: list[str], source: str, prefix: str | None = None) -> MXNetFiles:
    """``PREFIX-symbol.json`` and every ``PREFIX-NNNN.params`` of a listing; without ``prefix`` the listing must
    hold one symbol only, so nothing is guessed."""
    symbols = [n for n in names if n.endswith(SYMBOL_SUFFIX) and (prefix is None or n == prefix + SYMBOL_SUFFIX)]
    if len(symbols) != 1:
        wanted = f"{prefix}{SYMBOL_SUFFIX}" if prefix else f"one MXNet *{SYMBOL_SUFFIX}"
        found = [n for n in names if n.endswith(SYMBOL_SUFFIX)]
        raise ClientError(f"{source}: expected {wanted}, found {len(found)}: {', '.join(found) or 'none'}")
    prefix = symbols[0][:-len(SYMBOL_SUFFIX)]
    params = {int(m.group(2)): n for n in names if (m := PARAMS_RE.fullmatch(n)) and m.group(1) == prefix}
    if not params:
        found = [n for n in names if n.endswith(".params")]
        raise ClientError(f"{source}: {symbols[0]} has no {prefix}-NNNN.params beside it (.params files found: "
                          f"{', '.join(found) or 'none'})")
    return MXNetFiles(symbols[0], params)


def _shapes(art: ArtifactReader) -> tuple[int, int, int]:
    """C,H,W of ``model-shapes.json`` (``[{"name": "data", "shape": [1, C, H, W]}]``)."""
    where = f"{art.source}: {SHAPES}"
    if SHAPES not in art.names:
        raise ClientError(f"{art.source}: {SHAPES} is missing, so the input image shape is unknown; SageMaker's "
                          f"artifacts have it (a checkpoint without it, such as MXNet's ImageNet models, serves as "
                          f"--pretrained weights, where image_shape says the shape)")
    raw = art.json(SHAPES)
    entries = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    data = [e for e in entries if e.get("name") == "data"] or (entries if len(entries) == 1 else [])
    shape = data[0].get("shape") if len(data) == 1 else None
    if not isinstance(shape, list) or len(shape) != 4:
        raise ClientError(f"{where} is {shown(raw)}; expected [{{\"name\": \"data\", \"shape\": [1, C, H, W]}}]")
    return parse_image_shape(shape[1:], where)


def _depth(graph: ResNetGraph, source: str) -> int:
    """The openic depth whose layout the graph has."""
    layout = Layout(graph.block, graph.units, graph.stem_width, graph.widths)  # type: ignore[arg-type]
    for depth, row in DEPTHS.items():
        if row == layout:
            return depth
    supported = "; ".join(f"{d}: {r.block} {list(r.units)}" for d, r in DEPTHS.items())
    raise ClientError(f"{source}: a ResNet of {graph.block} units {list(graph.units)} (stem {graph.stem_width}, "
                      f"widths {list(graph.widths)}) is not a depth openic builds (supported: {supported})")


def read_metadata(art: ArtifactReader, image_shape: tuple[int, int, int] | None = None,
                  prefix: str | None = None) -> dict[str, Any]:
    """The metadata openic keeps for its own artifacts, derived from the symbol and ``model-shapes.json``.

    Args:
        image_shape: the input shape when the checkpoint has no ``model-shapes.json`` (MXNet's ImageNet models).
        prefix: which checkpoint of a folder holding several (``resnet-50`` of ``resnet-50-symbol.json``).
    """
    files = find_files(art.names, art.source, prefix)
    where = f"{art.source}: {files.symbol}"
    graph = resnet_graph(parse_symbol(art.json(files.symbol), where), where)
    num_layers = _depth(graph, where)
    c, h, w = image_shape or _shapes(art)
    stem = 3 if h <= SMALL_STEM_MAX_HEIGHT else 7
    if graph.stem_kernel != stem:
        raise ClientError(f"{where}: conv0 is {graph.stem_kernel}x{graph.stem_kernel}, but images of height {h} take "
                          f"a {stem}x{stem} stem (3x3 up to height {SMALL_STEM_MAX_HEIGHT}, 7x7 above): the image "
                          f"shape {c},{h},{w} does not belong to this network")
    hyper = {"num_layers": str(num_layers), "num_classes": str(graph.num_classes), "image_shape": f"{c},{h},{w}",
             "multi_label": "1" if graph.multi_label else "0"}
    return {"format": FORMAT, "format_version": 1, "num_layers": num_layers, "num_classes": graph.num_classes,
            "image_shape": [c, h, w], "epoch": max(files.last - 1, 0), "metrics": None,
            "mxnet": {"symbol": files.symbol, "params": files.params[files.last]},
            "checkpoints": {str(n - 1): name for n, name in sorted(files.params.items()) if n >= 1},
            "hyperparameters": hyper}


def _params_file(meta: dict[str, Any], epoch: int | None, source: str) -> str:
    if epoch is None:
        return meta["mxnet"]["params"]
    if str(epoch) not in meta["checkpoints"]:
        stored = sorted(int(e) for e in meta["checkpoints"])
        raise ClientError(f"{source}: no checkpoint of epoch {epoch} (its file would be numbered {epoch + 1:04d}; "
                          f"epochs stored: {stored or 'none'})")
    return meta["checkpoints"][str(epoch)]


def _as_tensor(name: str, array: np.ndarray, want: tuple[int, ...], where: str) -> Tensor:
    if array.shape != want:
        raise ClientError(f"{where}: {name} has shape {array.shape}, but the network the symbol and image shape "
                          f"describe needs {want}")
    if array.dtype.kind != "f":
        raise ClientError(f"{where}: {name} is {array.dtype}; expected floating-point weights")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def read_state(art: ArtifactReader, meta: dict[str, Any], epoch: int | None = None) -> dict[str, Tensor]:
    """openic state dict from the ``.params`` of the last (or the given 0-based) epoch of :func:`read_metadata`'s
    ``meta``, checked name by name.

    The file is read only up to the size the described network needs (float64 weights, plus headers), so a
    damaged or hostile archive cannot make this allocate more.
    """
    name = _params_file(meta, epoch, art.source)
    where = f"{art.source}: {name}"
    if name not in art.names:
        raise ClientError(f"{art.source}: {name} is not there (files: {', '.join(art.names)})")
    with torch.device("meta"):  # names and shapes only: nothing is allocated before the file is found to fit
        model = create_model(meta["num_layers"], meta["num_classes"], tuple(meta["image_shape"]))
    expected, names = model.state_dict(), mxnet_name_map(model)
    limit = sum(t.numel() for t in expected.values()) * 8 + 1 * MiB + 1024 * len(expected)
    args, auxs = split_checkpoint(parse_params(art.read(name, limit), where), where)
    if both := sorted(set(args) & set(auxs)):
        raise ClientError(f"{where}: {both[0]} is stored both as arg: and aux:")
    arrays = args | auxs
    missing = [n for n in names if n not in arrays]
    unexpected = [n for n in arrays if n not in names]
    if missing or unexpected:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ClientError(f"{where}: the arrays do not match ResNet-{meta['num_layers']} as the symbol describes it: "
                          f"{'; '.join(parts)}")
    conv0 = arrays["conv0_weight"]
    if conv0.ndim == 4 and conv0.shape[1] != meta["image_shape"][0]:
        raise ClientError(f"{where}: the weights take {conv0.shape[1]}-channel images (conv0_weight {conv0.shape}), "
                          f"but the image shape is {','.join(map(str, meta['image_shape']))}")
    state = {key: _as_tensor(mx, arrays[mx], tuple(expected[key].shape), where) for mx, key in names.items()}
    state[_BN_DATA_GAMMA] = torch.ones_like(state[_BN_DATA_GAMMA])
    for key in expected:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    return state

