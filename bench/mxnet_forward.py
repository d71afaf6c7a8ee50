"""MXNet 1.9.1 reference forward pass for bench/serve.py — runs inside bench/.mxnet-venv, never imported by openic.

Builds the same network ``bench/mxnet_train.py`` trains (SageMaker's pre-activation ResNet, here ResNet-18 with the
3x3 stem MXNet uses for images of at most 32 pixels), binds it for inference with ``mx.mod.Module`` as SageMaker's
MXNet serving container does, initialises it with the same Xavier initialiser (untrained weights: speed only), and
times ``forward`` + ``asnumpy`` (the output copied out, as a server must) at each batch size. ``--fuse`` also times
the graph after ``optimize_for("MKLDNN")`` (oneDNN operator fusion, which SageMaker's container does not apply).
Prints one JSON line per (variant, batch size): median and mean milliseconds per call, and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mxnet_train import build_symbol  # noqa: E402


def _module(sym, shape: tuple[int, ...], params: tuple[dict, dict] | None):
    mod = mx.mod.Module(sym, data_names=("data",), label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", shape)], for_training=False)
    if params is None:
        mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    else:
        mod.set_params(*params, allow_missing=False)
    return mod


def time_forward(mod, shape: tuple[int, ...], seconds: float, min_calls: int) -> dict:
    data = mx.nd.array(np.random.default_rng(0).integers(0, 256, shape).astype(np.float32))
    batch = mx.io.DataBatch([data])
    for _ in range(5):  # warm-up: oneDNN primitive creation, memory planning
        mod.forward(batch, is_train=False)
        mod.get_outputs()[0].asnumpy()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        tic = time.perf_counter()
        mod.forward(batch, is_train=False)
        mod.get_outputs()[0].asnumpy()
        times.append(time.perf_counter() - tic)
    times.sort()
    median = times[len(times) // 2]
    mean = sum(times) / len(times)
    return {"batch": shape[0], "calls": len(times), "median_ms": median * 1e3, "mean_ms": mean * 1e3,
            "images_per_s": shape[0] / mean}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-layers", type=int, default=18)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-shape", default="3,32,32")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--seconds", type=float, default=3.0, help="time each batch size at least this long")
    p.add_argument("--min-calls", type=int, default=10)
    p.add_argument("--fuse", action="store_true", help="also time the optimize_for('MKLDNN') graph")
    args = p.parse_args()
    mx.random.seed(0)
    shape = tuple(int(v) for v in args.image_shape.split(","))
    # SoftmaxOutput's label input only matters for training; serving runs the same softmax without it
    sym = mx.sym.softmax(build_symbol(args.num_layers, args.num_classes, shape).get_internals()["fc1_output"])
    base = _module(sym, (1, *shape), None)
    params = base.get_params()
    variants = {"module": sym}
    if args.fuse:
        variants["module+mkldnn-fusion"] = sym.optimize_for("MKLDNN")
    info = {"mxnet": mx.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "mkldnn": mx.runtime.Features().is_enabled("MKLDNN")}
    print(json.dumps({"info": info}), flush=True)
    for name, s in variants.items():
        for b in (int(v) for v in args.batches.split(",")):
            mod = _module(s, (b, *shape), params)
            row = time_forward(mod, (b, *shape), args.seconds, args.min_calls)
            print(json.dumps({"variant": name, **row}), flush=True)


if __name__ == "__main__":
    main()
