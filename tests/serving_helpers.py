"""Shared pieces of the serving tests: small artifacts, encoded images, a real server on a free port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from openic.artifacts import save_model
from openic.formats.images import encode_image
from openic.hyperparams import HyperParameters
from openic.models.resnet import create_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHAPE = (3, 16, 16)
CLASSES = ["cat", "dog", "owl", "yak"]


def make_artifact(folder: Path, *, multi_label: bool = False, shape=SHAPE, classes=CLASSES, seed: int = 0,
                  resize: int | None = None) -> Path:
    """An untrained ResNet-20 ``model.tar.gz`` (random but fixed weights, BatchNorm statistics made non-trivial)."""
    hp = {"num_layers": "20", "num_classes": str(len(classes)), "image_shape": ",".join(map(str, shape)),
          "num_training_samples": "64", "multi_label": "1" if multi_label else "0"}
    if resize:
        hp["resize"] = str(resize)
    torch.manual_seed(seed)
    model = create_model(20, len(classes), shape)
    model.train()
    with torch.no_grad():  # a few forward passes so running statistics are not the identity
        for _ in range(3):
            model(torch.rand(8, *shape) * 255)
    return save_model(folder, model.eval(), HyperParameters.from_strings(hp), epoch=0, class_names=list(classes))


def image(h: int = 20, w: int = 24, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def jpeg(h: int = 20, w: int = 24, seed: int = 0) -> bytes:
    return encode_image(image(h, w, seed), ".jpg", quality=95)


def png(h: int = 20, w: int = 24, seed: int = 0, channels: int = 3) -> bytes:
    img = image(h, w, seed, channels)
    return encode_image(img if channels == 3 else img[..., 0], ".png")


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path | None, *args: str, env: dict | None = None, port: int | None = None,
                 timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """``openic serve`` in a subprocess; returns it and its base URL once ``/ping`` answers 200."""
    port = port or free_port()
    argv = [sys.executable, "-m", "openic", "serve", "--port", str(port), *args]
    if model is not None:
        argv += ["--model", str(model)]
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": SRC, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.communicate()}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not answer /ping in {timeout}s: {proc.communicate()}")


def post(url: str, body: bytes, content_type: str, accept: str | None = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type,
                                                                          **({"Accept": accept} if accept else {}),
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
