"""Write ``tests/data/opencv_goldens/goldens.npz`` with the OpenCV that MXNet 1.9.1's tools use — runs inside
bench/.mxnet-venv (opencv-python-headless 4.11, as ``pip install mxnet`` users have it).

Edge-shaped images (one row, one column, gray and RGB, noise and smooth) with ``cv2.imencode`` JPEG and PNG
bytes at random settings and ``cv2.resize(INTER_LINEAR)`` results: what ``im2rec`` writes. openic's reference
encoders/resize and its OpenCV fast path must both reproduce them (``tests/test_opencv_paths.py``).

    bench/.mxnet-venv/bin/python bench/make_opencv_goldens.py tests/data/opencv_goldens
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261204)
    arrays: dict[str, np.ndarray] = {}
    for i in range(160):
        h = int(rng.choice([1, 2, 3, rng.integers(1, 70)]))
        w = int(rng.choice([1, 2, rng.integers(1, 70)]))
        img = rng.integers(0, 256, (h, w, 3) if i % 2 else (h, w), dtype=np.uint8)
        if i % 3 == 0:
            img = np.sort(img, axis=0)
        bgr = np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else img
        jq, pq = int(rng.integers(0, 101)), int(rng.integers(0, 10))
        th, tw = int(rng.integers(1, 100)), int(rng.integers(1, 100))
        arrays[f"{i}_img"] = img
        arrays[f"{i}_settings"] = np.array([jq, pq, th, tw])
        arrays[f"{i}_jpg"] = np.frombuffer(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jq])[1], np.uint8)
        arrays[f"{i}_png"] = np.frombuffer(cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, pq])[1], np.uint8)
        arrays[f"{i}_resize"] = cv2.resize(img, (tw, th), interpolation=cv2.INTER_LINEAR)
    np.savez_compressed(out / "goldens.npz", **arrays)
    (out / "README.md").write_text(
        "# OpenCV goldens\n\nWritten by `bench/make_opencv_goldens.py` with opencv-python-headless "
        f"{cv2.__version__} (the OpenCV of MXNet 1.9.1's venv): 160 edge-shaped images, their `cv2.imencode` JPEG "
        "and PNG bytes and `cv2.resize(INTER_LINEAR)` results. `tests/test_opencv_paths.py` checks openic's "
        "reference and OpenCV paths against them.\n")


if __name__ == "__main__":
    main()
