"""Write SageMaker-style MXNet artifacts of every depth with MXNet 1.9.1 — runs inside bench/.mxnet-venv.

For ``bench/mxnet_import.py``: each model is SageMaker's network (``mxnet_train.build_symbol``) with Xavier weights,
random BatchNorm gamma/beta, and BatchNorm statistics gathered by MXNet itself (training passes at learning
rate 0 over random images), saved with ``mx.model.save_checkpoint`` as ``image-classification-NNNN``
plus ``model-shapes.json`` in a ``model.tar.gz``, as the algorithm does. Next to it: ``inputs.npy`` (uint8 N,C,H,W),
and MXNet's own inference outputs ``probs.npy`` / ``logits.npy`` (``Module(label_names=None)``,
``forward(is_train=False)``, after reloading the checkpoint from disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

import mxnet as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mxnet_train import build_symbol  # noqa: E402

# name: (num_layers, (C, H, W), classes, epochs-count in the file name, stored bn_data_gamma or None)
MULTI_LABEL = {"resnet20_3x28x28_c6_multilabel"}  # LogisticRegressionOutput head: independent sigmoids
MODELS = {
    "resnet20_3x28x28_c6_multilabel": (20, (3, 28, 28), 6, 2, None),
    "resnet20_1x28x28_c3": (20, (1, 28, 28), 3, 1, None),
    "resnet32_3x28x28_c5": (32, (3, 28, 28), 5, 12, 0.05),
    "resnet56_3x24x24_c10": (56, (3, 24, 24), 10, 3, None),
    "resnet110_3x28x28_c10": (110, (3, 28, 28), 10, 2, None),
    "resnet18_3x30x30_c4": (18, (3, 30, 30), 4, 1, None),
    "resnet18_1x32x32_c4": (18, (1, 32, 32), 4, 1, None),
    "resnet18_3x224x224_c1000": (18, (3, 224, 224), 1000, 1, None),
    "resnet34_3x48x64_c7": (34, (3, 48, 64), 7, 5, None),
    "resnet50_3x64x64_c7": (50, (3, 64, 64), 7, 1, None),
    "resnet101_1x64x64_c3": (101, (1, 64, 64), 3, 1, None),
    "resnet152_3x64x64_c3": (152, (3, 64, 64), 3, 1, None),
    "resnet200_3x64x64_c2": (200, (3, 64, 64), 2, 1, None),
}
BATCH = 8


def _multi_label(sym):
    """The same network with a sigmoid head, as for multi-hot labels."""
    fc1 = sym.get_internals()["fc1_output"]
    return mx.sym.LogisticRegressionOutput(fc1, name="softmax")


def _gather_statistics(sym, shape, classes: int, rng: np.random.Generator, multi: bool):
    """Xavier weights, random BN gamma/beta, then MXNet's own moving statistics from training-mode passes."""
    labels = (BATCH, classes) if multi else (BATCH,)
    mod = mx.mod.Module(sym, data_names=("data",), label_names=("softmax_label",), context=mx.cpu())
    mod.bind(data_shapes=[("data", (BATCH, *shape))], label_shapes=[("softmax_label", labels)], for_training=True)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    args, auxs = mod.get_params()
    for name, arr in args.items():
        if name.endswith("_gamma"):
            arr[:] = rng.uniform(0.5, 1.5, arr.shape)
        elif name.endswith("_beta"):
            arr[:] = rng.normal(0, 0.2, arr.shape)
    mod.set_params(args, auxs)
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.0})  # weights stay as they are
    for _ in range(40):  # momentum 0.9: 0.9**40 leaves 1.5% of the initial statistics
        data = mx.nd.array(rng.integers(0, 256, (BATCH, *shape)).astype(np.float32))
        label = mx.nd.array(rng.integers(0, 2, labels) if multi else rng.integers(0, classes, BATCH)).astype("float32")
        mod.forward(mx.io.DataBatch([data], [label]), is_train=True)
        mod.backward()  # MXNet's BatchNorm writes its moving statistics in the backward pass
        mod.update()
    return mod.get_params()


def make(name: str, out: Path, seed: int) -> dict:
    num_layers, shape, classes, count, gamma = MODELS[name]
    rng = np.random.default_rng(seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    multi = name in MULTI_LABEL
    sym = _multi_label(build_symbol(num_layers, classes, shape)) if multi else build_symbol(num_layers, classes, shape)
    args, auxs = _gather_statistics(sym, shape, classes, rng, multi)
    if gamma is not None:
        args["bn_data_gamma"][:] = gamma  # fix_gamma: MXNet ignores it, so must the importer
    prefix = str(folder / "image-classification")
    mx.model.save_checkpoint(prefix, count, sym, args, auxs)
    (folder / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, *shape]}]))
    members = ["image-classification-symbol.json", f"image-classification-{count:04d}.params", "model-shapes.json"]
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        for m in members:
            tar.add(folder / m, arcname=m)
    sym2, args2, auxs2 = mx.model.load_checkpoint(prefix, count)  # as an artifact user would
    inputs = rng.integers(0, 256, (BATCH, *shape), dtype=np.uint8)
    outs = {}
    for key, s, labels in (("probs", sym2, ("softmax_label",)), ("logits", sym2.get_internals()["fc1_output"], None)):
        mod = mx.mod.Module(s, data_names=("data",), label_names=labels, context=mx.cpu())
        mod.bind(data_shapes=[("data", inputs.shape)], for_training=False)  # no label shapes: inference
        mod.set_params(args2, auxs2, allow_missing=False, allow_extra=True)
        mod.forward(mx.io.DataBatch([mx.nd.array(inputs.astype(np.float32))]), is_train=False)
        outs[key] = mod.get_outputs()[0].asnumpy()
    np.save(folder / "inputs.npy", inputs)
    np.save(folder / "probs.npy", outs["probs"])
    np.save(folder / "logits.npy", outs["logits"])
    return {"name": name, "num_layers": num_layers, "image_shape": list(shape), "num_classes": classes,
            "params": members[1], "max_abs_logit": float(np.abs(outs["logits"]).max())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", choices=sorted(MODELS), help="default: all")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    for name in args.only or MODELS:
        print(json.dumps(make(name, args.out, args.seed)), flush=True)


if __name__ == "__main__":
    main()
