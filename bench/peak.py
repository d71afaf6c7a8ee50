"""The fp32 ceiling beside MXNet: how fast any fp32 ResNet-18 could run on this CPU, and how close MXNet already is.

One run, the same threads for every part, one thing at a time:
1. this CPU's fp32 (and bf16) practical peak through torch: the faster of large square GEMMs and large 3x3
   convolutions (the best of a few sizes each; on an AVX-512 Xeon the convolutions were ~15 % faster);
2. the FLOPs of the network per image (torch's ``FlopCounterMode``, a multiply-add counting 2): ResNet-18 with
   the 3x3 stem, forward at 3x32x32 (``bench/serve.py``'s model) and a training step at 3x28x28 (the workshop);
3. MXNet 1.9.1's forward at batch 1 and 64 (``bench/mxnet_forward.py``) and its synthetic training step at batch
   128 (``bench/mxnet_step.py``), in ``bench/.mxnet-venv``; openic's eager fp32 forward and step beside them.

Prints each as GFLOP/s and as a fraction of the fp32 peak, and the largest speedup over MXNet any fp32
implementation could reach on this machine (peak / MXNet's GFLOP/s) beside the issues' targets. Run:
``.venv/bin/python bench/peak.py [--threads 2] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))
from mxnet_env import ensure_mxnet_venv  # noqa: E402

TARGETS = {"forward batch 1": 1 / 0.6, "forward batch 64": 1.5, "training step": 1.5}  # speedup over MXNet


def _gflops(fn, flops: float, budget: float) -> tuple[float, float]:
    """(GFLOP/s of ``fn`` called for about ``budget`` seconds, seconds of its first call)."""
    tic = time.perf_counter()
    fn()
    first = time.perf_counter() - tic
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        fn()
        calls += 1
    return flops * calls / (time.perf_counter() - start) / 1e9, first


def gemm_peak(dtype: str, seconds: float) -> float:
    """GFLOP/s of the fastest of a few large square matrix multiplies (larger sizes are skipped once one call
    takes longer than the time given to a size: bfloat16 without hardware support runs at ~1 GFLOP/s)."""
    import torch

    best = 0.0
    for n in (512, 1024, 2048, 3072):
        a = torch.randn(n, n).to(getattr(torch, dtype))
        b = torch.randn(n, n).to(getattr(torch, dtype))
        rate, first = _gflops(lambda a=a, b=b: a @ b, 2 * n**3, seconds / 4)
        best = max(best, rate)
        if first > seconds / 4:
            break
    return best


def conv_peak(dtype: str, seconds: float) -> float:
    """GFLOP/s of the fastest of a few large 3x3 convolutions (channels-last, batch 64): on some CPUs oneDNN's
    convolution kernels beat torch's matrix multiply, and the ceiling must be the faster of the two."""
    import torch

    best = 0.0
    for channels, side in ((128, 14), (256, 7), (256, 14)):
        x = torch.randn(64, channels, side, side).to(getattr(torch, dtype))
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 3, 3).to(x.dtype).contiguous(memory_format=torch.channels_last)
        rate, first = _gflops(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1),
                              2 * 64 * side * side * channels * channels * 9, seconds / 6)
        best = max(best, rate)
        if first > seconds / 3:  # emulated bfloat16: the larger sizes would take too long
            break
    return best


def flops_per_image(shape: tuple[int, int, int], train: bool) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from openic.models import create_model

    model = create_model(18, 10, shape).train(train)
    x = torch.zeros(2, *shape)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / 2


def timed(fn, seconds: float, min_calls: int = 5) -> float:
    """Mean seconds per call after two warm-up calls."""
    from step import call_times

    times = call_times(fn, seconds, min_calls)
    return sum(times) / len(times)


def openic_forward(batch: int, seconds: float) -> float:
    """Images/s of the eager fp32 forward (uint8 in, probabilities out, as the server calls it)."""
    import torch

    from openic.data.transforms import to_float_input
    from openic.models import create_model

    model = create_model(18, 10, (3, 32, 32)).eval().to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)

    def call() -> None:
        with torch.inference_mode():
            torch.softmax(model(to_float_input(x)), dim=1).numpy()

    return batch / timed(call, seconds)


def openic_step(batch: int, seconds: float) -> float:
    """Images/s of the eager fp32 SGD step (momentum 0.9, wd 1e-4) on a fixed random batch (bench/step.py's)."""
    from step import openic_steps

    times = openic_steps(18, (3, 28, 28), batch, bf16=False, seconds=seconds)
    return batch * len(times) / sum(times)


def mxnet(script: str, args: list[str], threads: int) -> list[dict]:
    python = ensure_mxnet_venv()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([str(python), str(BENCH / script), *args], capture_output=True, text=True, env=env,
                         check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    gemm = {d: gemm_peak(d, args.seconds) for d in ("float32", "bfloat16")}
    conv = {d: conv_peak(d, args.seconds) for d in ("float32", "bfloat16")}
    peak = {d: max(gemm[d], conv[d]) for d in gemm}
    print(f"GEMM peak: float32 {gemm['float32']:.0f} GFLOP/s, bfloat16 {gemm['bfloat16']:.0f} GFLOP/s; 3x3 conv "
          f"peak: float32 {conv['float32']:.0f}, bfloat16 {conv['bfloat16']:.0f}; the ceiling below is the higher")
    fwd, step = flops_per_image((3, 32, 32), False), flops_per_image((3, 28, 28), True)
    print(f"ResNet-18: forward 3x32x32 {fwd / 1e9:.3f} GFLOP/image, training step 3x28x28 {step / 1e9:.3f}")
    rows = {r["batch"]: r for r in mxnet("mxnet_forward.py", ["--batches", "1,64", "--seconds", str(args.seconds)],
                                         args.threads) if r.get("variant") == "module"}
    mx_step = mxnet("mxnet_step.py", ["--seconds", str(2 * args.seconds)], args.threads)[0]
    cases = {"forward batch 1": (fwd, 1 / (rows[1]["median_ms"] / 1e3), openic_forward(1, args.seconds)),
             "forward batch 64": (fwd, rows[64]["images_per_s"], openic_forward(64, args.seconds)),
             "training step": (step, mx_step["images_per_s"], openic_step(128, 2 * args.seconds))}
    print("\n| case | MXNet img/s | MXNet GFLOP/s (of peak) | openic img/s | openic GFLOP/s (of peak) | "
          "fp32 ceiling vs MXNet | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (flops, mx_rate, ours) in cases.items():
        mx_gf, our_gf = mx_rate * flops / 1e9, ours * flops / 1e9
        print(f"| {name} | {mx_rate:.0f} | {mx_gf:.0f} ({mx_gf / peak['float32']:.0%}) | {ours:.0f} | {our_gf:.0f} "
              f"({our_gf / peak['float32']:.0%}) | {peak['float32'] / mx_gf:.2f}x | {TARGETS[name]:.2f}x |")


if __name__ == "__main__":
    main()
