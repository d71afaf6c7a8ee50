"""Every benchmark in one command, side by side with MXNet 1.9.1, written into ``bench/RESULTS.md``.

Runs the scripts below one after another (never two at once: on 2 cores concurrent runs would spoil each other's
figures), each in its own process, and prepends one dated section to ``RESULTS.md`` (or ``--out``) holding the
machine, the versions and every script's printed tables and ratios, verbatim. A script that fails is recorded
with its exit status and the tail of its error output; the rest still run.

    .venv/bin/python bench/all.py                     # everything (about 30-40 min on 2 cores)
    .venv/bin/python bench/all.py --quick             # short settings, for a smoke run
    .venv/bin/python bench/all.py --only pipeline,recordio --out /tmp/results.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# name: (script, full arguments, --quick arguments, what it measures)
SUITE: dict[str, tuple[str, list[str], list[str], str]] = {
    "pipeline": ("pipeline.py", [], ["--images", "3000", "--runs", "1", "--epochs", "2"],
                 "input pipeline vs ImageRecordIter, in memory and streaming"),
    "recordio": ("recordio.py", [], ["--quick"], "RecordIO reads and im2rec packing"),
    "train": ("train.py", ["--epochs", "5"], ["--epochs", "1", "--configs", "resnet20"],
              "training samples/s and time to accuracy (fp32; --openic-args for float16)"),
    "train_fp16": ("train.py", ["--epochs", "5", "--openic-args=--precision_dtype float16"],
                   ["--epochs", "1", "--configs", "resnet20", "--openic-args=--precision_dtype float16"],
                   "the same with precision_dtype=float16 (bf16 autocast on CPU)"),
    "step": ("step.py", [], ["--configs", "resnet20", "--repeats", "1", "--seconds", "2"],
             "training-step images/s, ResNet-18/20 at 28x28 and ResNet-50 at 224x224, fp32 and bf16, vs MXNet"),
    "serve": ("serve.py", ["--seconds", "4"], ["--seconds", "1", "--backends", "onnx"],
              "inference latency/throughput, torch and ONNX Runtime, vs MXNet's forward"),
    "mxnet_import": ("mxnet_import.py", [], [], "imported SageMaker/MXNet models vs MXNet's outputs"),
    "peak": ("peak.py", ["--seconds", "4"], ["--seconds", "1"],
             "the fp32 GEMM peak of this CPU beside MXNet's and openic's forward and training step"),
}


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.platform()}")


def run_one(name: str, quick: bool) -> str:
    script, full, short, what = SUITE[name]
    argv = [sys.executable, str(BENCH / script), *(short if quick else full)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - start
    shown = " ".join(["bench/" + script, *(short if quick else full)])
    body = proc.stdout.strip()
    if proc.returncode != 0:
        body += f"\n\nFAILED with exit status {proc.returncode}:\n" + "\n".join(proc.stderr.strip().splitlines()[-15:])
    return f"### {name}: `{shown}` — {what} ({took:.0f} s)\n\n```\n{body}\n```\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SUITE)}")
    p.add_argument("--quick", action="store_true", help="short settings (smoke run; figures are noisier)")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="file to prepend the section to")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}")
    sections = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        sections.append(run_one(name, args.quick))
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = (f"## {when} — `bench/all.py{' --quick' if args.quick else ''}`: {_machine()}\n\n"
            "Each block is the script's own output, openic and MXNet 1.9.1 measured side by side in the same run; "
            "ratios are openic / MXNet.\n\n")
    section = head + "\n".join(sections) + "\n"
    old = args.out.read_text() if args.out.is_file() else "# Benchmark results\n\n"
    title, _, rest = old.partition("\n## ")
    new = f"{title.rstrip()}\n\n{section}" + (f"## {rest}" if rest else "")
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, args.out)
    print(section)
    failed = sum("FAILED with exit status" in s for s in sections)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
