"""Imported SageMaker/MXNet models against MXNet 1.9.1's own outputs, for every depth, side by side.

``bench/mxnet_models.py`` (in bench/.mxnet-venv) writes SageMaker-style artifacts of ResNet 20..200 (1 and 3
channels, both stems, square and not) with MXNet's inference outputs; this script loads each artifact with openic
(no MXNet) and serves MXNet's uint8 inputs through the serving path (npy request -> probabilities), then prints per
model the largest probability and logit differences and whether every argmax agrees. The fixtures in
``shared/fixtures/mxnet_models`` are checked too when present. Exit status 1 if any model misses the tolerance
(probabilities 1e-4 absolute, logits 1e-4 relative to the largest logit).

    python bench/mxnet_import.py [--dir /tmp/mxnet-models] [--reuse]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from mxnet_env import ensure_mxnet_venv  # noqa: E402

from openic.artifacts.model import load_model  # noqa: E402
from openic.serving.handler import NPY_TYPE, decode, load  # noqa: E402

FIXTURES = BENCH.parents[1] / "shared" / "fixtures" / "mxnet_models"


def _npy_body(nchw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)))  # the endpoint takes NHWC uint8
    return buf.getvalue()


def check(folder: Path) -> dict:
    inputs = np.load(folder / "inputs.npy")
    probs_mx, logits_mx = np.load(folder / "probs.npy"), np.load(folder / "logits.npy")
    start = time.perf_counter()
    loaded = load_model(folder / "model.tar.gz")
    load_s = time.perf_counter() - start
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(inputs).float()).numpy()
    predictor = load(folder / "model.tar.gz")
    images = decode(_npy_body(inputs), NPY_TYPE, inputs.shape[1])
    served = predictor.predict(predictor.preprocess(images))
    scale = max(1.0, float(np.abs(logits_mx).max()))
    return {"model": folder.name, "depth": loaded.metadata["num_layers"],
            "shape": "x".join(map(str, loaded.metadata["image_shape"])), "load_s": load_s,
            "probs": float(np.abs(served - probs_mx).max()),
            "logits_rel": float(np.abs(logits - logits_mx).max()) / scale,
            "argmax": bool((served.argmax(1) == probs_mx.argmax(1)).all())}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, help="where MXNet writes the models (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="use the models already in --dir")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.dir or Path(tmp)
        if not args.reuse:
            python = ensure_mxnet_venv()
            subprocess.run([str(python), str(BENCH / "mxnet_models.py"), "--out", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
        folders = sorted(d for d in out.iterdir() if (d / "probs.npy").is_file())
        folders += sorted(d for d in FIXTURES.glob("*") if (d / "probs.npy").is_file())
        rows = [check(d) for d in folders]
    print(f"{'model':30} {'depth':>5} {'C x H x W':>11} {'load s':>7} {'max|dp|':>9} {'max|dlogit|/scale':>18} argmax")
    for r in rows:
        print(f"{r['model']:30} {r['depth']:5} {r['shape']:>11} {r['load_s']:7.2f} {r['probs']:9.1e} "
              f"{r['logits_rel']:18.1e} {'same' if r['argmax'] else 'DIFFERENT'}")
    bad = [r["model"] for r in rows if r["probs"] > 1e-4 or r["logits_rel"] > 1e-4 or not r["argmax"]]
    failed = f"; failed: {', '.join(bad)}" if bad else ""
    print(f"{len(rows) - len(bad)}/{len(rows)} models within tolerance{failed}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
