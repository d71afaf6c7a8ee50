"""Training-step images/s, openic vs MXNet 1.9.1: ResNet-18 and ResNet-20 at 3x28x28, ResNet-50 at 3x224x224.

The model's compute alone, on a fixed random batch (no input pipeline; ``bench/train.py`` has whole epochs):
one SGD step (momentum 0.9, wd 1e-4) with the loss copied out. MXNet runs ``bench/mxnet_step.py`` in
``bench/.mxnet-venv``; openic runs this script's ``--worker`` mode (float32, and ``precision_dtype=float16``'s
bfloat16 autocast), every measurement in a fresh process, the columns alternating ``--repeats`` times, the same
thread count; each process reports its median step, and the table gives the median over processes. Run:
``.venv/bin/python bench/step.py [--configs resnet18,resnet20,resnet50] [--repeats 3] [--seconds 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from mxnet_env import ensure_mxnet_venv  # noqa: E402

CONFIGS = {  # name: (depth, image shape, batch)
    "resnet18": (18, "3,28,28", 128),
    "resnet20": (20, "3,28,28", 128),
    "resnet50": (50, "3,224,224", 16),
}
TARGETS = {"float32": 1.5, "bfloat16": 2.5}  # issue 10: openic / MXNet float32


def openic_steps(depth: int, shape: tuple[int, int, int], batch: int, bf16: bool, seconds: float,
                 min_steps: int = 5) -> list[float]:
    """Seconds per SGD step of openic's network (channels-last, as training runs it), after two warm-up steps."""
    import torch

    sys.path.insert(0, str(BENCH.parent / "src"))
    from openic.data.transforms import to_float_input
    from openic.models import create_model

    torch.manual_seed(0)
    model = create_model(depth, 10, shape).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(to_float_input(x)), y)
        loss.backward()
        opt.step()
        loss.item()

    return call_times(step, seconds, min_steps)


def call_times(fn, seconds: float, min_calls: int = 5, warmup: int = 2) -> list[float]:
    """Seconds of each call of ``fn`` for about ``seconds`` (at least ``min_calls``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return times


def _measure(column: str, cfg: tuple[int, str, int], args: argparse.Namespace) -> float:
    """Images/s of one fresh process (its median step)."""
    depth, shape, batch = cfg
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--num-layers", str(depth), "--image-shape", shape, "--batch-size", str(batch),
              "--seconds", str(args.seconds)]
    if column == "MXNet float32":
        cmd = [str(ensure_mxnet_venv()), str(BENCH / "mxnet_step.py"), *common]
    else:
        cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads), *common,
               *(["--bf16"] if "bfloat16" in column else [])]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{column} step failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    row = json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])
    return batch / (row["median_step_ms"] / 1e3)


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.image_shape.split(","))
    times = openic_steps(args.num_layers, shape, args.batch_size, args.bf16, args.seconds)
    print(json.dumps({"steps": len(times), "median_step_ms": statistics.median(times) * 1e3}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="resnet18,resnet20,resnet50")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num-layers", type=int, default=18, help=argparse.SUPPRESS)
    p.add_argument("--image-shape", default="3,28,28", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    if not 1 <= args.repeats <= 20:
        p.error(f"--repeats {args.repeats}: give 1 to 20")
    columns = ["MXNet float32", "openic float32", "openic bfloat16"]
    print(f"{args.threads} threads, {args.repeats} processes per cell, {args.seconds} s each")
    print("| model | batch | " + " | ".join(f"{c} img/s" for c in columns) + " | fp32 ratio | bf16 ratio |")
    print("| --- | ---: |" + " ---: |" * (len(columns) + 2))
    for name in args.configs.split(","):
        if name not in CONFIGS:
            p.error(f"--configs {name!r}: choose from {', '.join(CONFIGS)}")
        cfg = CONFIGS[name]
        rates: dict[str, list[float]] = {c: [] for c in columns}
        for _ in range(args.repeats):
            for column in columns:
                rates[column].append(_measure(column, cfg, args))
        med = {c: statistics.median(v) for c, v in rates.items()}
        mx = med["MXNet float32"]
        print(f"| {name} {cfg[1]} | {cfg[2]} | " + " | ".join(f"{med[c]:.1f}" for c in columns)
              + f" | {med['openic float32'] / mx:.2f}x (target {TARGETS['float32']}x) | "
              f"{med['openic bfloat16'] / mx:.2f}x (target {TARGETS['bfloat16']}x) |", flush=True)


if __name__ == "__main__":
    main()
