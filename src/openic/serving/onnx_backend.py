"""ONNX Runtime backend: the artifact's network exported once to ONNX, cached beside the artifact.

The cache is keyed by the artifact's SHA-256 (``model.tar.gz`` -> ``.model.tar.gz.<sha12>.onnx`` in the same
folder; a read-only folder such as ``/opt/ml/model`` falls back to ``$XDG_CACHE_HOME/openic/onnx``), so a new
artifact at the same path is never served with the old graph. The export is checked against torch on a probe
batch before it is used: probabilities agree within 1e-4.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from openic.errors import ClientError
from openic.fileio import atomic_path

log = logging.getLogger(__name__)

OPSET = 17


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def cache_path(artifact: Path) -> Path:
    """Where the export of ``artifact`` lives: beside it when that folder is writable, else the user cache."""
    artifact = Path(artifact)
    name = f".{artifact.name}.{_digest(artifact)}.onnx"
    folder = artifact.parent if artifact.is_file() else artifact
    if os.access(folder, os.W_OK):
        return folder / name
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openic" / "onnx"
    return base / name


def export(model: torch.nn.Module, image_shape: tuple[int, int, int], dest: Path) -> Path:
    """Export ``model`` (batch axis dynamic) to ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    probe = torch.zeros((2, *image_shape), dtype=torch.float32)
    with atomic_path(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (it needs no onnxscript)
        torch.onnx.export(model.eval(), (probe,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return dest


class OnnxBackend:
    """An ONNX Runtime CPU session; same input (float32 raw 0..255 NCHW) and output (logits) as the torch model."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ClientError("--backend onnx needs onnxruntime: pip install 'openic[onnx]'") from e
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a damaged file
            raise ClientError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e}); delete it to "
                              "re-export") from e
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]

    @classmethod
    def for_artifact(cls, artifact: Path, model: torch.nn.Module, image_shape: tuple[int, int, int],
                     threads: int | None = None) -> OnnxBackend:
        """The cached export of ``artifact`` (made now if missing), checked against ``model`` on a probe batch."""
        dest = cache_path(artifact)
        if not dest.exists():
            log.info("exporting %s to ONNX at %s", artifact, dest)
            export(model, image_shape, dest)
        backend = cls(dest, threads)
        probe = np.random.default_rng(0).integers(0, 256, (2, *image_shape)).astype(np.float32)
        with torch.inference_mode():
            want = torch.softmax(model(torch.from_numpy(probe)), 1).numpy()
        got = torch.softmax(torch.from_numpy(backend(probe)), 1).numpy()
        if not np.allclose(got, want, atol=1e-4, rtol=0):
            raise ClientError(f"{dest}: the ONNX export disagrees with the torch model by "
                              f"{float(np.abs(got - want).max()):.2g} (limit 1e-4); delete it to re-export")
        return backend
