"""MXNet 1.9.1's training step on synthetic data, for bench/peak.py and bench/step.py (bench/.mxnet-venv only).

The network ``bench/mxnet_train.py`` trains (SageMaker's pre-activation ResNet), bound for training with
``mx.mod.Module``; one step is ``forward_backward`` + ``update`` (SGD, momentum 0.9, wd 1e-4) on a fixed random
batch, the loss copied out. No input pipeline: this is the model's compute alone. Prints one JSON line.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-layers", type=int, default=18)
    p.add_argument("--image-shape", default="3,28,28")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--min-steps", type=int, default=5)
    args = p.parse_args()
    mx.random.seed(0)
    shape = tuple(int(v) for v in args.image_shape.split(","))
    b = args.batch_size
    mod = mx.mod.Module(build_symbol(args.num_layers, 10, shape), context=mx.cpu())
    mod.bind(data_shapes=[("data", (b, *shape))], label_shapes=[("softmax_label", (b,))], for_training=True)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4})
    rng = np.random.default_rng(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.integers(0, 256, (b, *shape)).astype(np.float32))],
                            [mx.nd.array(rng.integers(0, 10, (b,)).astype(np.float32))])

    def step() -> None:
        mod.forward_backward(batch)
        mod.update()
        mod.get_outputs()[0].asnumpy()

    for _ in range(2):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < args.min_steps or time.perf_counter() - start < args.seconds:
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    mean = sum(times) / len(times)
    print(json.dumps({"mxnet": mx.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "steps": len(times), "step_ms": mean * 1e3, "images_per_s": b / mean,
                      "median_step_ms": sorted(times)[len(times) // 2] * 1e3}), flush=True)


if __name__ == "__main__":
    main()
