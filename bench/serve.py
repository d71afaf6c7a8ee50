"""Serving speed: ``openic serve`` under load vs the model alone, and openic's forward vs MXNet 1.9.1's.

One run, one machine, one thing at a time (the load generator shares the cores with the server, as a client on
the same box would):
1. the model alone, per backend (torch float32 and bfloat16, eager and ``--compile``d; ONNX Runtime): latency
   at batch 1, throughput at batch 64, and decode + one model call for one 32x32 JPEG — the floor a server's
   latency at concurrency 1 is held to;
2. MXNet 1.9.1's forward of the same network (``bench/mxnet_forward.py`` in ``bench/.mxnet-venv``) at batch 1/64;
3. the server on a ResNet-18 3x32x32 artifact: requests/s, p50 and p99 at concurrency 1, 8, 32, 64 with one
   32x32 JPEG per request, and the mean batch the server formed (from its ``/metrics``); then the model alone
   at that formed batch size, for the ≥80% target at concurrency 32.
Prints a table of figures and the ratios against the issue's targets. Run:
``.venv/bin/python bench/serve.py [--seconds 5] [--backends torch,torch-bf16+compiled,onnx]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "src"))
from loadgen import run_load  # noqa: E402
from mxnet_env import ensure_mxnet_venv  # noqa: E402
from step import call_times  # noqa: E402

SHAPE = (3, 32, 32)
CLASSES = 10


def make_artifact(folder: Path) -> Path:
    import torch

    from openic.artifacts import save_model
    from openic.hyperparams import HyperParameters
    from openic.models.resnet import create_model

    torch.manual_seed(0)
    hp = HyperParameters.from_strings({"num_layers": "18", "num_classes": str(CLASSES), "image_shape": "3,32,32",
                                       "num_training_samples": "50000"})
    return save_model(folder, create_model(18, CLASSES, SHAPE).eval(), hp, epoch=0, class_names=None)


def sample_jpeg() -> bytes:
    from openic.formats.images import encode_image

    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return encode_image(img, ".jpg", quality=90)


def timed(fn, seconds: float, min_calls: int = 10) -> list[float]:
    """Sorted seconds per call, after 5 warm-up calls (a compiled backend's first calls of a bucket are slow)."""
    return sorted(call_times(fn, seconds, min_calls, warmup=5))


def model_alone(artifact: Path, backend: str, threads: int, seconds: float, batches: list[int]) -> dict:
    """Per batch size: median ms per call and images/s; plus decode + preprocess + one call for one JPEG."""
    import torch

    from openic.serving.handler import IMAGE_TYPES, decode, load

    name, compiled = _split(backend)
    predictor = load(artifact, backend=name, threads=threads, compile_batch=max(batches) if compiled else None)
    rows = {}
    for b in batches:
        x = torch.randint(0, 256, (b, *SHAPE), dtype=torch.uint8)
        t = timed(lambda x=x: predictor.predict(x), seconds)
        rows[b] = {"median_ms": t[len(t) // 2] * 1e3, "images_per_s": b / (sum(t) / len(t))}
    body = sample_jpeg()
    jpeg_type = next(iter(IMAGE_TYPES))
    t = timed(lambda: predictor.predict(predictor.preprocess(decode(body, jpeg_type, 3))), seconds)
    rows["decode+call"] = {"median_ms": t[len(t) // 2] * 1e3, "p99_ms": t[int(0.99 * (len(t) - 1))] * 1e3}
    return rows


def _split(backend: str) -> tuple[str, bool]:
    """``torch-bf16+compiled`` is the torch-bf16 backend with ``--compile``."""
    name, _, suffix = backend.partition("+")
    return name, suffix == "compiled"


def mxnet_forward(threads: int, seconds: float) -> dict:
    python = ensure_mxnet_venv()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([str(python), str(BENCH / "mxnet_forward.py"), "--batches", "1,64", "--seconds",
                          str(seconds), "--image-shape", ",".join(map(str, SHAPE))],
                         capture_output=True, text=True, env=env, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["batch"]: r for r in rows if r.get("variant") == "module"}


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name))


def start_server(artifact: Path, backend: str, threads: int, port: int) -> tuple[subprocess.Popen, str]:
    name, compiled = _split(backend)
    cmd = [sys.executable, "-m", "openic", "serve", "--model", str(artifact), "--port", str(port), "--backend",
           name, "--threads", str(threads), "--max-batch", "64", *(["--compile"] if compiled else [])]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1800):  # --compile compiles every batch bucket before /ping answers
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"openic serve exited {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("openic serve did not answer /ping in 3 minutes")


def server_load(artifact: Path, backend: str, threads: int, seconds: float, port: int) -> dict:
    proc, url = start_server(artifact, backend, threads, port)
    body, rows = sample_jpeg(), {}
    try:
        run_load(url, body, "image/jpeg", requests=300, concurrency=8)  # warm-up
        for c in (1, 8, 32, 64):
            probe = run_load(url, body, "image/jpeg", requests=max(c * 4, 50), concurrency=c)
            n = max(c * 20, int(probe.requests_per_s * seconds))
            count0, sum0 = metric(url, "openic_batch_size_count"), metric(url, "openic_batch_size_sum")
            r = run_load(url, body, "image/jpeg", requests=n, concurrency=c)
            count1, sum1 = metric(url, "openic_batch_size_count"), metric(url, "openic_batch_size_sum")
            bad = len(r.errors) + r.count(lambda s: s != 200)
            rows[c] = {"requests": n, "req_per_s": r.requests_per_s, "p50_ms": r.percentile(0.5) * 1e3,
                       "p99_ms": r.percentile(0.99) * 1e3, "mean_batch": (sum1 - sum0) / max(1, count1 - count0),
                       "non_200": bad}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def report(backend: str, alone: dict, at_formed: dict, server: dict, mx: dict | None) -> list[str]:
    lines = [f"## {backend}",
             "| concurrency | requests | req/s | p50 ms | p99 ms | mean batch formed | non-200 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for c, r in server.items():
        lines.append(f"| {c} | {r['requests']} | {r['req_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['mean_batch']:.1f} | {r['non_200']} |")
    formed = round(server[32]["mean_batch"])
    share = server[32]["req_per_s"] / at_formed["images_per_s"]
    floor = alone["decode+call"]["median_ms"]
    lines += ["",
              f"- model alone: batch 1 {alone[1]['median_ms']:.2f} ms, batch 64 {alone[64]['images_per_s']:.0f} "
              f"images/s; at the batch formed at c=32 ({formed}): {at_formed['images_per_s']:.0f} images/s",
              f"- server at c=32 / model alone at batch {formed}: {share:.2f} (target >= 0.80)",
              f"- p99 at c=1 / decode + one call ({floor:.2f} ms median): {server[1]['p99_ms'] / floor:.2f} "
              "(target <= 1.5)",
              f"- p99 at c=1 / p99 of decode + one call ({alone['decode+call']['p99_ms']:.2f} ms): "
              f"{server[1]['p99_ms'] / alone['decode+call']['p99_ms']:.2f}"]
    if mx:
        lines += [f"- batch-1 latency / MXNet's ({mx[1]['median_ms']:.2f} ms): "
                  f"{alone[1]['median_ms'] / mx[1]['median_ms']:.2f} (target <= 0.6)",
                  f"- batch-64 throughput / MXNet's ({mx[64]['images_per_s']:.0f} images/s): "
                  f"{alone[64]['images_per_s'] / mx[64]['images_per_s']:.2f} (target >= 1.5)"]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="about how long each measurement runs")
    p.add_argument("--backends", default="torch,torch+compiled,torch-bf16,torch-bf16+compiled,onnx")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/ORT/OMP threads (all cores)")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--no-mxnet", action="store_true")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.threads} threads, ResNet-18 3x32x32, one 32x32 JPEG per request")
    mx = None if args.no_mxnet else mxnet_forward(args.threads, args.seconds)
    if mx:
        print(f"MXNet 1.9.1 forward: batch 1 {mx[1]['median_ms']:.2f} ms, batch 64 {mx[64]['images_per_s']:.0f} "
              "images/s")
    with tempfile.TemporaryDirectory(prefix="openic-bench-serve-") as tmp:
        artifact = make_artifact(Path(tmp))
        for backend in args.backends.split(","):
            alone = model_alone(artifact, backend, args.threads, args.seconds, [1, 64])
            server = server_load(artifact, backend, args.threads, args.seconds, args.port)
            formed = max(1, round(server[32]["mean_batch"]))
            at_formed = model_alone(artifact, backend, args.threads, args.seconds, [formed])[formed]
            print("\n".join(report(backend, alone, at_formed, server, mx)), flush=True)


if __name__ == "__main__":
    main()
