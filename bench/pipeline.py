"""Input pipeline images/s: openic's training batches vs MXNet 1.9.1's ``ImageRecordIter``, side by side.

The issue's configuration: a RecordIO of 32x32 JPEGs, 28x28 random crop + mirror, batch 128, shuffled, two
threads each side. openic is measured both ways it feeds training: in memory (decoded once, then uint8 crops on
the fly; the first epoch includes the decode) and streaming (DataLoader workers decoding every epoch, as for data
sets over ``--cache-mb``). MXNet's side runs in ``bench/.mxnet-venv`` (``preprocess_threads=2``). Each figure is
the median of ``--runs`` fresh processes, alternating openic and MXNet; epoch 1 and the mean of epochs 2..N are
reported apart, with ratios openic / MXNet. Epoch 1 includes building the pipeline on both sides (MXNet's
iterator starts decoding when it is built; openic's in-memory path decodes the data set in its setup).

    .venv/bin/python bench/pipeline.py [--images 10000] [--epochs 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from mxnet_env import ensure_mxnet_venv  # noqa: E402

WORK = BENCH / ".work"
THREADS = 2

_MXNET = """
import json, sys, time, mxnet as mx
rec, epochs = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()  # the iterator starts decoding when built: that counts for its first epoch
it = mx.io.ImageRecordIter(path_imgrec=rec, data_shape=(3, 28, 28), batch_size=128, rand_crop=True,
                           rand_mirror=True, shuffle=True, preprocess_threads=@THREADS@, seed=0)
setup = time.perf_counter() - t0
times = []
for e in range(epochs):
    t, n = time.perf_counter(), 0
    for batch in it:
        batch.data[0].wait_to_read()
        n += batch.data[0].shape[0] - batch.pad
    times.append((n, time.perf_counter() - t + (setup if e == 0 else 0.0)))
    it.reset()
print(json.dumps(times))
""".replace("@THREADS@", str(THREADS))

_OPENIC = """
import json, sys, time, torch
from pathlib import Path
from openic.data.sources import Channel
from openic.hyperparams import HyperParameters
from openic.train.config import TrainConfig
from openic.train.setup import build_data
rec, val = Path(sys.argv[1]), Path(sys.argv[5])
epochs, cache_mb, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(@THREADS@)
hp = HyperParameters.from_strings({"num_classes": "10", "num_training_samples": str(n), "image_shape": "3,28,28",
                                   "mini_batch_size": "128", "augmentation_type": "crop", "num_layers": "18"})
t0 = time.perf_counter()  # a 128-image validation channel, so the setup time is the training channel's
data = build_data(hp, {"train": Channel("train", rec), "validation": Channel("validation", val)},
                  TrainConfig(output_dir=Path("/tmp/pipeline-bench"), cache_mb=cache_mb, workers=@THREADS@))
setup = time.perf_counter() - t0
times = []
for e in range(epochs):
    data.train.set_epoch(e)
    t, seen = time.perf_counter(), 0
    for x, y in data.train:
        seen += x.shape[0]
    times.append((seen, time.perf_counter() - t + (setup if e == 0 else 0.0)))
print(json.dumps(times))
""".replace("@THREADS@", str(THREADS))


def make_rec(images: int) -> Path:
    """``images`` random 32x32 JPEGs (10 classes) in a RecordIO, written by openic (MXNet reads it the same)."""
    from openic.formats.images import encode_image
    from openic.formats.recordio import IRHeader, RecordWriter, pack

    path = WORK / f"pipeline32_{images}.rec"
    if path.is_file() and path.with_suffix(".idx").is_file():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for i in range(images):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            w.write(pack(IRHeader(0, float(i % 10), i, 0), encode_image(img, ".jpg", 95)), key=i)
    return path


def _run(argv: list[str]) -> list[tuple[int, float]]:
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return [tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def _rates(runs: list[list[tuple[int, float]]]) -> tuple[float, float]:
    first = statistics.median(r[0][0] / r[0][1] for r in runs)
    steady = statistics.median(sum(n for n, _ in r[1:]) / sum(t for _, t in r[1:]) for r in runs)
    return first, steady


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    mxpy = str(ensure_mxnet_venv())
    rec, val = make_rec(args.images), make_rec(128)
    results: dict[str, list] = {"mxnet": [], "memory": [], "stream": []}
    for _ in range(args.runs):  # alternating, fresh processes
        results["mxnet"].append(_run([mxpy, "-c", _MXNET, str(rec), str(args.epochs)]))
        for name, cache in (("memory", 4096), ("stream", 0)):
            results[name].append(_run([sys.executable, "-c", _OPENIC, str(rec), str(args.epochs), str(cache),
                                       str(args.images), str(val)]))
    mx_first, mx_steady = _rates(results["mxnet"])
    print(f"{args.images} 32x32 JPEGs -> 28x28 random crop + mirror, batch 128, {THREADS} threads, "
          f"median of {args.runs} runs, images/s (epoch 1 / epochs 2..{args.epochs})")
    print(f"{'pipeline':<28} {'epoch 1':>9} {'steady':>9} {'ratio 1':>8} {'ratio 2+':>9}")
    print(f"{'MXNet ImageRecordIter':<28} {mx_first:>9,.0f} {mx_steady:>9,.0f} {'':>8} {'':>9}")
    for name, label in (("memory", "openic in memory"), ("stream", "openic streaming")):
        first, steady = _rates(results[name])
        print(f"{label:<28} {first:>9,.0f} {steady:>9,.0f} {first / mx_first:>7.2f}x {steady / mx_steady:>8.2f}x")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t:.0f} s)")
