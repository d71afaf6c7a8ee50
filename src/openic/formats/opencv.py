"""Optional OpenCV fast paths for the encoders and the resize of :mod:`openic.formats.images`.

The numpy/Pillow code there is the reference: it gives MXNet's bytes and pixels without OpenCV. When
``opencv-python(-headless)`` is installed (``pip install 'openic[fast]'``), ``cv2.imencode`` and ``cv2.resize`` do
the same work 3-40x faster, but only where this OpenCV build gives exactly the reference's output: at first use,
each path (JPEG, PNG, resize) is run on probe images against the reference, and a path that differs is not used
(logged once), since libjpeg, zlib and SIMD code vary between OpenCV builds. ``OPENIC_OPENCV=0`` turns all of
them off. When openic loads OpenCV it sets OpenCV's thread pool to one thread (process-wide, so a program that
also uses OpenCV itself sees that): callers such as im2rec's ``--num-thread`` choose the parallelism.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("jpeg", "png", "resize")
_lock = threading.Lock()
_state: dict[str, bool] = {}
_override: bool | None = None
_cv2: Any = None


def set_enabled(enabled: bool | None) -> None:
    """Force the fast paths on (still only those that pass their check) or off; ``None``: back to the default."""
    global _override
    _override = enabled


def _module() -> Any:
    global _cv2
    if _cv2 is None:
        try:
            import cv2
        except ImportError:
            _cv2 = False
        else:
            cv2.setNumThreads(1)
            _cv2 = cv2
    return _cv2


def _probes() -> list[np.ndarray]:
    rng = np.random.default_rng(20261204)
    smooth = np.add.outer(np.arange(37), np.arange(29)).astype(np.uint8)
    return [rng.integers(0, 256, (23, 31, 3), dtype=np.uint8), rng.integers(0, 256, (16, 16), dtype=np.uint8),
            np.stack([smooth, smooth[::-1], 255 - smooth], -1), np.zeros((9, 40, 3), np.uint8),
            rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (14, 22, 4), dtype=np.uint8)]


def _passes(kind: str, reference: Callable[..., Any]) -> bool:
    """Whether OpenCV reproduces ``reference`` on the probes for ``kind``."""
    try:
        for img in _probes():
            if kind == "resize":
                for hw in ((7, 11), (50, 61), (img.shape[0] // 2, img.shape[1] // 2), (img.shape[0], 3)):
                    if not np.array_equal(_resize(img, *hw), reference(img, *hw)):
                        return False
            elif img.ndim == 2 or img.shape[2] == 3:  # the encoders take gray or RGB
                enc = ".jpg" if kind == "jpeg" else ".png"
                for q in ((95, 50, 100) if kind == "jpeg" else (9, 1, 3)):
                    if _encode(img, enc, q) != reference(img, enc, q):
                        return False
    except Exception:  # noqa: BLE001 - a broken OpenCV build is a reason not to use it, not to fail
        log.exception("OpenCV %s check failed", kind)
        return False
    return True


def usable(kind: str, reference: Callable[..., Any]) -> bool:
    """Whether the OpenCV path for ``kind`` is on: installed, not turned off, and checked against ``reference``."""
    if _override is False or (_override is None and os.environ.get("OPENIC_OPENCV", "1") == "0"):
        return False
    if kind not in _state:
        with _lock:
            if kind not in _state:
                ok = bool(_module()) and _passes(kind, reference)
                if _module() and not ok:
                    log.info("OpenCV %s gives other %s output than openic's reference; using the reference",
                             _module().__version__, kind)
                _state[kind] = ok
    return _state[kind]


def _encode(arr: np.ndarray, enc: str, quality: int) -> bytes:
    cv2 = _module()
    img = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)  # ~7x faster than a reversed-axis copy
    flag = cv2.IMWRITE_PNG_COMPRESSION if enc == ".png" else cv2.IMWRITE_JPEG_QUALITY
    ok, buf = cv2.imencode(enc, img, [flag, int(quality)])
    if not ok:
        raise ValueError(f"cv2.imencode({enc}) failed")
    return buf.tobytes()


def _resize(src: np.ndarray, height: int, width: int) -> np.ndarray:
    return _module().resize(src, (width, height), interpolation=_module().INTER_LINEAR)


def encode(arr: np.ndarray, enc: str, quality: int, reference: Callable[..., bytes]) -> bytes | None:
    """``cv2.imencode`` of an RGB/gray uint8 image when that path is usable, else None (use the reference)."""
    kind = "png" if enc == ".png" else "jpeg"
    return _encode(arr, enc, quality) if usable(kind, reference) else None


def resize(src: np.ndarray, height: int, width: int, reference: Callable[..., np.ndarray]) -> np.ndarray | None:
    """``cv2.resize(INTER_LINEAR)`` of an HxW / HxWxC uint8 image when usable, else None."""
    if not usable("resize", reference) or (src.ndim == 3 and src.shape[2] > 4):
        return None
    out = _resize(src, height, width)
    return out[..., None] if src.ndim == 3 and out.ndim == 2 else out
