"""Writers of MXNet's checkpoint files for tests: ``.params`` records (PARAMS_FORMAT.md), symbol JSON, SageMaker's
``model.tar.gz``. Real MXNet-written files are in the fixtures; these make the variants they lack (damaged files,
other depths for the pretrained path, another family) without MXNet."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

from openic.formats.mxnet_params import parse_params
from openic.models.depths import DEPTHS
from openic.models.resnet import create_model, mxnet_name_map

FLAGS = {"float32": 0, "float64": 1, "float16": 2, "uint8": 3, "int32": 4, "int8": 5, "int64": 6, "bool": 7}


def record(array: np.ndarray, flag: int | None = None) -> bytes:
    """One dense V2 record."""
    a = np.ascontiguousarray(array)
    head = struct.pack("<Iii", 0xF993FAC9, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
    dtype = FLAGS[a.dtype.name] if flag is None else flag
    return head + struct.pack("<iii", 1, 0, dtype) + a.astype(a.dtype.newbyteorder("<")).tobytes()


def params_bytes(arrays: dict[str, np.ndarray], records: list[bytes] | None = None) -> bytes:
    """An NDArray list file: ``arrays`` by name (or pre-built ``records`` with the same names)."""
    recs = records if records is not None else [record(a) for a in arrays.values()]
    names = b"".join(struct.pack("<Q", len(n.encode())) + n.encode() for n in arrays)
    return struct.pack("<QQQ", 0x112, 0, len(recs)) + b"".join(recs) + struct.pack("<Q", len(arrays)) + names


def checkpoint_arrays(model) -> dict[str, np.ndarray]:
    """An openic model's weights under MXNet's checkpoint keys (``arg:``/``aux:``)."""
    state = model.state_dict()
    out = {}
    for mx, key in mxnet_name_map(model).items():
        kind = "aux" if "moving_" in mx else "arg"
        out[f"{kind}:{mx}"] = state[key].detach().numpy().astype(np.float32)
    return out


def symbol(num_layers: int, num_classes: int, height: int, *, head: str = "SoftmaxOutput") -> dict:
    """A symbol JSON with the node names, operators and attributes of MXNet's symbols/resnet.py."""
    row = DEPTHS[num_layers]
    nodes: list[dict] = [{"op": "null", "name": "data", "inputs": []}]

    def add(op: str, name: str, **attrs: object) -> None:
        nodes.append({"op": op, "name": name, "attrs": {k: str(v) for k, v in attrs.items()}, "inputs": []})

    add("_copy", "id")
    add("BatchNorm", "bn_data", eps="2e-05", fix_gamma="True")
    small = height <= 32
    add("Convolution", "conv0", num_filter=row.stem_width, kernel="(3, 3)" if small else "(7, 7)", no_bias="True")
    if not small:
        add("BatchNorm", "bn0", eps="2e-05", fix_gamma="False")
        add("Activation", "relu0", act_type="relu")
        add("Pooling", "pooling0", kernel="(3, 3)", stride="(2, 2)", pool_type="max")
    convs = 3 if row.block == "bottleneck" else 2
    for s, (units, width) in enumerate(zip(row.units, row.widths, strict=True), 1):
        for u in range(1, units + 1):
            name = f"stage{s}_unit{u}"
            for k in range(1, convs + 1):
                add("BatchNorm", f"{name}_bn{k}", eps="2e-05", fix_gamma="False")
                add("Activation", f"{name}_relu{k}", act_type="relu")
                filters = width if k == convs else (width // 4 if row.block == "bottleneck" else width)
                add("Convolution", f"{name}_conv{k}", num_filter=filters, kernel="(3, 3)", no_bias="True")
            if u == 1:
                add("Convolution", f"{name}_sc", num_filter=width, kernel="(1, 1)", no_bias="True")
            add("elemwise_add", f"_plus_{name}")
    add("BatchNorm", "bn1", eps="2e-05", fix_gamma="False")
    add("Activation", "relu1", act_type="relu")
    add("Pooling", "pool1", global_pool="True", kernel="(7, 7)", pool_type="avg")
    add("Flatten", "flatten0")
    add("FullyConnected", "fc1", num_hidden=num_classes)
    add(head, "softmax")
    return {"nodes": nodes, "arg_nodes": [0], "heads": [[len(nodes) - 1, 0, 0]],
            "attrs": {"mxnet_version": ["int", 10901]}}


def write_checkpoint(folder: Path, prefix: str, count: int, num_layers: int, num_classes: int,
                     image_shape: tuple[int, int, int], *, seed: int = 0, shapes: bool = True) -> Path:
    """``PREFIX-symbol.json`` + ``PREFIX-NNNN.params`` (+ ``model-shapes.json``) of a random openic ResNet."""
    import torch

    torch.manual_seed(seed)
    model = create_model(num_layers, num_classes, image_shape)
    for m in model.modules():  # statistics that make a difference, so a wrong mapping changes the output
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-symbol.json").write_text(json.dumps(symbol(num_layers, num_classes, image_shape[1])))
    (folder / f"{prefix}-{count:04d}.params").write_bytes(params_bytes(checkpoint_arrays(model)))
    if shapes:
        (folder / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, *image_shape]}]))
    return folder


def tar_folder(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    return dest


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_tar(dest: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def fixture_arrays(tar_path: Path) -> dict[str, np.ndarray]:
    """The ``.params`` arrays of a SageMaker ``model.tar.gz``, by checkpoint key."""
    files = members(tar_path)
    return parse_params(files[next(n for n in files if n.endswith(".params"))])
