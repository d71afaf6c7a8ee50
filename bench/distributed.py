"""Distributed training: samples/s for 1 vs 2 processes on this machine, and the scaling arithmetic for N hosts.

Part 1 runs ``openic train`` on the digits RecordIO (``openic datasets digits``) with one process, then with
``--nproc-per-node 2`` at the same global batch (``mini_batch_size`` is per host, so two processes take half each),
and prints the steady-state epoch samples/s (epochs after the first) and their ratio. On a 2-core machine two
processes share the same cores, so the ratio measures DDP's overhead (gradient all-reduce over gloo, duplicated
Python work), not a speed-up; a host per process is where the speed-up comes from.

Part 2 is arithmetic, per depth: parameters, gradient bytes per step (fp32), what a ring all-reduce moves per host
per step (2 (N-1)/N × gradient bytes), and the network bandwidth a host needs so that the all-reduce fits inside
a step of a given length (DDP overlaps it with the backward pass, so this is the bound for no slow-down).

Run: ``.venv/bin/python bench/distributed.py [--epochs 4] [--num-layers 18] [--step-ms 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digits(work: Path) -> tuple[Path, Path]:
    from openic.prep.samples import make_digits

    info = make_digits(work / "digits")
    return info.train_rec, info.val_rec


def _run(train: Path, val: Path, out: Path, args: argparse.Namespace, nproc: int) -> float:
    """Mean samples/s of the epochs after the first (the first pays for decoding and warm-up)."""
    cmd = [sys.executable, "-m", "openic", "train", "--train", str(train), "--validation", str(val),
           "--output-dir", str(out), "--num_layers", str(args.num_layers), "--image_shape", "3,28,28",
           "--num_classes", "10", "--num_training_samples", "1437", "--mini_batch_size", str(args.batch),
           "--epochs", str(args.epochs), "--learning_rate", "0.01", "--precise-bn-batches", "0"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["epoch_time"] for r in rows if "epoch_time" in r][1:]
    return 1437 * len(speeds) / sum(speeds)


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="openic-bench-dist-") as tmp:
        work = Path(tmp)
        train, val = _digits(work)
        one = _run(train, val, work / "one", args, 1)
        two = _run(train, val, work / "two", args, 2)
    print(f"ResNet-{args.num_layers}, 3x28x28, global batch {args.batch}, digits (1,437 images), "
          f"{os.cpu_count()} CPU cores")
    print(f"  1 process : {one:8.1f} samples/s")
    print(f"  2 processes (gloo, one host): {two:8.1f} samples/s   ratio 2/1 = {two / one:.2f}x")


def arithmetic(step_ms: float, hosts: list[int]) -> None:
    from openic.models import create_model

    print(f"\nAll-reduce per step (fp32 gradients, ring), and the bandwidth that hides it in a {step_ms:.0f} ms step:")
    print(f"{'depth':>6} {'params':>12} {'grad MB':>9} " + " ".join(f"{f'N={n} MB/host':>13} {'Gbit/s':>7}"
                                                              for n in hosts))
    for depth in (18, 34, 50, 101, 152, 200):
        model = create_model(depth, 1000, (3, 224, 224))
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        grad_mb = params * 4 / 1e6
        cells = []
        for n in hosts:
            moved = 2 * (n - 1) / n * grad_mb
            gbit = moved * 8 / 1e3 / (step_ms / 1e3)
            cells.append(f"{moved:13.1f} {gbit:7.1f}")
        print(f"{depth:>6} {params:>12,} {grad_mb:9.1f} " + " ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=18)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--step-ms", type=float, default=100.0, help="step time to hide the all-reduce in")
    p.add_argument("--skip-measure", action="store_true")
    args = p.parse_args()
    if not args.skip_measure:
        measure(args)
    arithmetic(args.step_ms, [2, 4, 8, 16])


if __name__ == "__main__":
    main()
