"""Training speed and accuracy: openic vs MXNet 1.9.1, side by side, same data and hyperparameters.

Configurations (the issue's): the workshop's ResNet-18 at 3,28,28 (batch 128, lr 0.01) and ResNet-20 at lr 0.1,
both on the digits RecordIO (``shared/fixtures/rec`` or ``openic datasets digits``), augmentation ``crop``.
For each, MXNet (``bench/mxnet_train.py`` in ``bench/.mxnet-venv``) and ``openic train`` run one after the other
on this machine; the script prints per-epoch validation accuracy, training samples/s, time per epoch, total wall
time, and the ratios. "Time to accuracy" is the summed epoch time until validation accuracy first reaches
``--target-accuracy`` (0.95; validation runs once per epoch, so it is counted in whole epochs), and also until
MXNet's best accuracy (the lowest of its runs' bests). ``--repeats N`` runs every column N times, alternating,
and reports medians. Run: ``.venv/bin/python bench/train.py [--epochs 5] [--configs workshop,resnet20] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from mxnet_env import ensure_mxnet_venv  # noqa: E402

CONFIGS = {
    "workshop": {"num_layers": 18, "lr": 0.01},
    "resnet20": {"num_layers": 20, "lr": 0.1},
}


_SCRATCH: list[tempfile.TemporaryDirectory] = []  # removed when the script exits


def _scratch(prefix: str) -> Path:
    """A temporary output folder for one run (the saved models are not kept)."""
    _SCRATCH.append(tempfile.TemporaryDirectory(prefix=prefix))
    return Path(_SCRATCH[-1].name)


def _data(args: argparse.Namespace) -> tuple[Path, Path, int]:
    fixtures = ROOT.parent / "shared" / "fixtures" / "rec"
    sys.path.insert(0, str(ROOT / "src"))
    from openic.formats.recordio import RecordReader

    if not (fixtures / "digits_train.rec").is_file():  # a clone without ../shared: the byte-identical rebuild
        from openic.prep.samples import make_digits

        fixtures = ROOT / "bench" / ".work" / "digits"
        if not (fixtures / "digits_val.rec").is_file():
            make_digits(fixtures)
    train, val = Path(args.train or fixtures / "digits_train.rec"), Path(args.validation or fixtures / "digits_val.rec")

    with RecordReader(train, use_index=False) as reader:  # counts by a scan: no .idx needed
        count = len(reader)
    return train, val, count


def run_mxnet(python: Path, cfg: dict, args: argparse.Namespace, train: Path, val: Path, n: int) -> tuple[list, float]:
    cmd = [
        str(python),
        str(BENCH / "mxnet_train.py"),
        "--train",
        str(train),
        "--validation",
        str(val),
        "--num-layers",
        str(cfg["num_layers"]),
        "--lr",
        str(cfg["lr"]),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--image-shape",
        args.image_shape,
        "--num-training-samples",
        str(n),
        "--threads",
        str(args.threads),
        "--out",
        str(_scratch("mxnet-bench-")),
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MXNET_CPU_WORKER_NTHREADS": str(args.threads)}
    tic = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if out.returncode != 0:
        raise RuntimeError(f"MXNet run failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")], wall


def run_openic(
    cfg: dict,
    args: argparse.Namespace,
    train: Path,
    val: Path,
    n: int,
    extra: list[str],
) -> tuple[list, float]:
    out_dir = _scratch("openic-bench-")
    cmd = [
        sys.executable,
        "-m",
        "openic",
        "train",
        "--train",
        str(train),
        "--validation",
        str(val),
        "--output-dir",
        str(out_dir),
        "--no-resume",
        "--threads",
        str(args.threads),
        "--num_layers",
        str(cfg["num_layers"]),
        "--learning_rate",
        str(cfg["lr"]),
        "--epochs",
        str(args.epochs),
        "--mini_batch_size",
        str(args.batch_size),
        "--image_shape",
        args.image_shape,
        "--num_classes",
        "10",
        "--num_training_samples",
        str(n),
        "--augmentation_type",
        "crop",
        *extra,
    ]
    tic = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - tic
    if res.returncode != 0:
        raise RuntimeError(f"openic run failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "validation:accuracy" in r]
    return [
        {
            "epoch": r["epoch"],
            "train_accuracy": r["train:accuracy"],
            "validation_accuracy": r["validation:accuracy"],
            "epoch_time": r["epoch_time"],
            "samples_per_sec": r["samples_per_sec"],
        }
        for r in epochs
    ], wall


def report(name: str, runs: dict[str, list[tuple[list, float]]], target: float) -> None:
    """One row per epoch (the first repeat), one column group per run; ratios are against the first run (MXNet);
    the summary lines give medians over the repeats."""
    print(f"\n== {name} ==")
    labels = list(runs)
    print("epoch | " + " | ".join(f"{lab:>28}" for lab in labels))
    print("      | " + " | ".join(f"{'val acc':>8} {'img/s':>7} {'s/epoch':>7} {'x':>3}" for _ in labels)
          + "   (x = epoch-time speed-up vs the first column)")
    ref_rows = runs[labels[0]][0][0]
    for i, ref in enumerate(ref_rows):
        cells = []
        for lab in labels:
            row = runs[lab][0][0][i]
            speed = ref["epoch_time"] / row["epoch_time"]
            cells.append(f"{row['validation_accuracy']:>8.4f} {row['samples_per_sec']:>7.1f} "
                         f"{row['epoch_time']:>7.2f} {speed:>3.2f}")
        print(f"{i:>5} | " + " | ".join(cells))
    # the lowest of MXNet's per-run bests, so that every MXNet run reaches it and no median hides a miss
    ref_best = min(max(r["validation_accuracy"] for r in rows) for rows, _ in runs[labels[0]])
    summary = {lab: _summary(reps, target, ref_best) for lab, reps in runs.items()}
    ref = summary[labels[0]]
    print(f"medians of {len(runs[labels[0]])} run(s) each; ratios are to {labels[0]}")
    for lab in labels:
        row = summary[lab]
        print(f"{lab:>28}: best val acc {row['best']:.4f}, final (run 1) "
              f"{runs[lab][0][0][-1]['validation_accuracy']:.4f}, {row['rate']:.1f} img/s from epoch 1 "
              f"(x{row['rate'] / ref['rate']:.2f}), wall {row['wall']:.1f} s; time to {target:.2f} accuracy "
              f"{_fmt(row['to_target'])} ({_ratio(row['to_target'], ref['to_target'])}), to {labels[0]}'s best "
              f"{ref_best:.4f} {_fmt(row['to_best'])} ({_ratio(row['to_best'], ref['to_best'])})")


def _summary(reps: list[tuple[list, float]], target: float, ref_best: float) -> dict[str, float | None]:
    """Medians over one column's runs: best accuracy, steady img/s, wall time, times to the two accuracies."""
    return {"best": _median([max(r["validation_accuracy"] for r in rows) for rows, _ in reps]),
            "rate": _median([_steady_rate(rows) for rows, _ in reps]),
            "wall": _median([wall for _, wall in reps]),
            "to_target": _median([_time_to(rows, target) for rows, _ in reps]),
            "to_best": _median([_time_to(rows, ref_best) for rows, _ in reps])}


def _time_to(rows: list, accuracy: float) -> float | None:
    """Summed epoch times until validation accuracy first reaches ``accuracy`` (None: never)."""
    total = 0.0
    for row in rows:
        total += row["epoch_time"]
        if row["validation_accuracy"] >= accuracy:
            return total
    return None


def _steady_rate(rows: list) -> float:
    """Training images/s over the epochs after the first (the first pays for set-up), or the only epoch."""
    later = rows[1:] or rows
    return statistics.median(r["samples_per_sec"] for r in later)


def _median(values: list) -> float | None:
    """The median, or None when any run never got there (a run that misses the target must not be hidden)."""
    return None if any(v is None for v in values) else statistics.median(values)


def _fmt(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f} s"


def _ratio(ours: float | None, ref: float | None) -> str:
    return "n/a" if ours is None or ref is None else f"{ours / ref:.2f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--configs", default="workshop,resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-shape", default="3,28,28")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--train")
    p.add_argument("--validation")
    p.add_argument("--openic-args", default="", help="extra flags for every openic run")
    p.add_argument("--no-float16", action="store_true", help="skip the extra openic run with precision_dtype=float16")
    p.add_argument("--target-accuracy", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=1, help="runs of every column, alternating; medians reported")
    args = p.parse_args()
    if not 1 <= args.repeats <= 20:
        p.error(f"--repeats {args.repeats}: give 1 to 20")
    python = ensure_mxnet_venv()
    train, val, n = _data(args)
    print(
        f"data: {train} ({n} images), {val}; epochs {args.epochs}, batch {args.batch_size}, "
        f"image_shape {args.image_shape}, threads {args.threads}"
    )
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        columns = {"MXNet 1.9.1 float32": lambda cfg=cfg: run_mxnet(python, cfg, args, train, val, n),
                   "openic float32": lambda cfg=cfg: run_openic(cfg, args, train, val, n, args.openic_args.split())}
        if not args.no_float16:
            columns["openic float16 (bf16 on CPU)"] = lambda cfg=cfg: run_openic(
                cfg, args, train, val, n, [*args.openic_args.split(), "--precision_dtype", "float16"])
        runs: dict[str, list[tuple[list, float]]] = {label: [] for label in columns}
        for _ in range(args.repeats):
            for label, run in columns.items():
                runs[label].append(run())
        report(f"{name}: ResNet-{cfg['num_layers']}, lr {cfg['lr']}", runs, args.target_accuracy)


if __name__ == "__main__":
    main()
