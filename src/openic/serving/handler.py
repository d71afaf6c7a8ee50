"""Serving as four pure hooks: ``load`` an artifact, ``decode`` a request body, ``predict`` a batch, ``encode`` the
answer. Each is testable without HTTP; :mod:`.app` is the thin HTTP shell and :mod:`.transform` the batch job.

The contract is SageMaker's image-classification container (spec §7): one JPEG/PNG per request (or a uint8 npy
array, openic's addition), answered with a bare JSON array of ``num_classes`` probabilities, or
``{"prediction": [...]}`` lines for ``application/jsonlines``. Serving never imports training: the artifact and the
evaluation transform (:mod:`openic.data.transforms`) are its only links to it.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from openic.artifacts.model import load_model
from openic.data.transforms import Augmenter, inference_transform
from openic.errors import ClientError, DataError, shown
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, decode_image
from openic.models.precision import native_bf16
from openic.serving import BACKENDS
from openic.storage.local import local_path

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
NPY_TYPE = "application/x-npy"
CONTENT_TYPES = (*IMAGE_TYPES, NPY_TYPE)
JSON, JSONLINES = "application/json", "application/jsonlines"
ACCEPTS = (JSON, JSONLINES)
PREPROCESS_MODES = ("sagemaker", "validation")
BF16_TOLERANCE = 0.05  # largest probability change bfloat16 may make on the probe batch
MAX_IMAGES_PER_REQUEST = 256  # an NHWC npy body; larger sets belong to batch transform


class RequestError(ClientError):
    """A request the server refuses, with the HTTP status that says why (400, 406, 413, 415, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Backend(Protocol):
    """Runs the network: float32 ``[N, C, H, W]`` (raw 0..255) to logits ``[N, num_classes]``."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """The model in eval mode under ``inference_mode`` on CPU (or the device it was loaded to), channels-last
    (oneDNN's fast layout: ~25 % less time per batch on CPU), in ``dtype``.

    bfloat16 casts the weights once, here, not per call as autocast would: at batch 1 the per-call cast costs
    as much as the convolutions it speeds up.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.name = "torch" if dtype == torch.float32 else "torch-bf16"
        self.model = model.eval().to(dtype=dtype, memory_format=torch.channels_last)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.device = next(model.parameters()).device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(x).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
            return self.forward(batch).float().cpu().numpy()


def bf16_backend(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> TorchBackend:
    """The bfloat16 backend, checked on a probe batch against float32: a model whose answers bfloat16 changes
    (beyond its ~1e-2 rounding) is refused at load, not discovered in production."""
    probe = np.random.default_rng(0).integers(0, 256, (4, *image_shape)).astype(np.float32)
    with torch.inference_mode():
        want = torch.softmax(model.eval()(torch.from_numpy(probe)), 1)
    if not native_bf16():
        log.warning("torch-bf16: this CPU has no native bfloat16 (AMX or AVX-512 BF16); it will be slower than "
                    "float32 here")
    backend = TorchBackend(model, torch.bfloat16)
    got = torch.softmax(torch.from_numpy(backend(probe)), 1)
    gap = float((got - want).abs().max())
    if gap > BF16_TOLERANCE:
        raise ClientError(f"--backend torch-bf16: bfloat16 changes this model's probabilities by {gap:.2g} on a "
                          f"probe batch (limit {BF16_TOLERANCE}); serve it with --backend torch or onnx")
    return backend


@dataclass(frozen=True)
class Answer:
    """What the client asked to get back (the parsed ``Accept`` header)."""

    media_type: str = JSON
    verbose: bool = False
    top_k: int = 5


@dataclass
class Predictor:
    """A loaded model and what the artifact says about it: shape, classes, multi-label, training's resize."""

    backend: Backend
    image_shape: tuple[int, int, int]
    num_classes: int
    multi_label: bool
    class_names: list[str] | None
    resize: int | None = None
    source: str = ""
    hyperparameters: dict[str, str] = field(default_factory=dict)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes the backend runs without padding (``--compile``'s buckets); empty when any size is."""
        return tuple(getattr(self.backend, "buckets", ()))

    def preprocess(self, images: Sequence[np.ndarray], mode: str = "sagemaker") -> torch.Tensor:
        """HWC uint8 images to one uint8 ``[N, C, H, W]`` batch.

        ``sagemaker`` (the default, as SageMaker's endpoint does): resize straight to ``H x W``, aspect not kept.
        ``validation``: training's evaluation transform (shorter side to ``resize`` when set, then centre crop),
        so the endpoint scores exactly what the training run logged as validation accuracy.
        """
        if mode not in PREPROCESS_MODES:
            raise RequestError(400, f"preprocess mode {shown(mode)} is not one of {', '.join(PREPROCESS_MODES)}")
        out = []
        for img in images:
            arr = np.ascontiguousarray(img)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)[None]
            try:
                if mode == "sagemaker":
                    out.append(inference_transform(x, self.image_shape))
                else:
                    out.append(Augmenter(None, self.image_shape, self.resize).eval_batch(x))
            except ClientError as e:
                raise RequestError(400, str(e)) from None
        return torch.cat(out)

    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, C, H, W]`` to probabilities ``[N, num_classes]``: softmax, or independent sigmoids when the
        model is multi-label (they need not sum to 1)."""
        logits = self.backend(batch.to(torch.float32).numpy()).astype(np.float64)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def load(path: str | Path, *, backend: str = "torch", threads: int | None = None,
         compile_batch: int | None = None) -> Predictor:
    """Load ``model.tar.gz`` (or its extracted folder, or an ``s3://`` URI of either, fetched once into this host's
    cache) for serving; a damaged or mismatched file fails here.

    Args:
        backend: one of :data:`openic.serving.BACKENDS` (``torch`` eager float32, ``torch-bf16``, or ``onnx``:
            ONNX Runtime, the export cached beside the artifact).
        threads: intra-op threads for this process, so several workers do not oversubscribe the cores.
        compile_batch: ``torch.compile`` a torch backend now for batches up to this size
            (:mod:`openic.serving.compiled`); ``None`` runs it eagerly.
    """
    if backend not in BACKENDS:
        raise ClientError(f"backend must be one of {', '.join(BACKENDS)}, got {shown(backend)}")
    if threads is not None:
        torch.set_num_threads(threads)
    path = local_path(path)
    loaded = load_model(path)
    hp = loaded.hyperparameters
    shape = tuple(int(v) for v in loaded.metadata["image_shape"])
    resize = hp.get("resize")
    if compile_batch is not None and backend == "onnx":  # before the export, which it would make in vain
        raise ClientError(f"--compile applies to the torch backends, not {backend} (ONNX Runtime optimises its "
                          "own graph)")
    impl: Backend
    if backend == "onnx":
        from openic.serving.onnx_backend import OnnxBackend

        impl = OnnxBackend.for_artifact(Path(path), loaded.model, shape, threads=threads)
    else:
        impl = bf16_backend(loaded.model, shape) if backend == "torch-bf16" else TorchBackend(loaded.model)
    if compile_batch is not None:
        from openic.serving.compiled import CompiledBackend

        assert isinstance(impl, TorchBackend)
        impl = CompiledBackend(impl, shape, compile_batch)
    return Predictor(backend=impl, image_shape=shape, num_classes=int(loaded.metadata["num_classes"]),
                     multi_label=str(hp.get("multi_label", "0")) == "1", class_names=loaded.class_names,
                     resize=int(resize) if resize not in (None, "", "None") else None, source=str(path),
                     hyperparameters=hp)


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters from a Content-Type or one Accept entry."""
    parts = (header or "").split(";")
    params = {}
    for p in parts[1:]:
        key, _, value = p.partition("=")
        if key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    return parts[0].strip().lower(), params


def check_content_type(header: str | None) -> str:
    kind, _ = media_type(header)
    if kind not in CONTENT_TYPES:
        raise RequestError(415, f"Content-Type {shown(header or '(none)')} is not supported; send one of "
                                f"{', '.join(CONTENT_TYPES)}")
    return kind


def parse_accept(header: str | None, num_classes: int) -> Answer:
    """The best supported entry of an ``Accept`` header (q-values honoured); ``*/*`` or none means JSON."""
    entries = []
    for i, raw in enumerate((header or JSON).split(",")):
        kind, params = media_type(raw)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if math.isfinite(q) and q > 0 and kind:
            entries.append((-q, i, kind, params))
    for _, _, kind, params in sorted(entries):
        if kind in ("*/*", "application/*"):
            kind = JSON
        if kind in ACCEPTS:
            verbose = params.get("verbose", "false").lower() in ("1", "true", "yes")
            top_k = _top_k(params.get("top_k", "5"), num_classes)
            return Answer(kind, verbose, top_k)
    raise RequestError(406, f"Accept {shown(header)} asks for nothing this endpoint answers; use {JSON} "
                            f"(optionally '{JSON}; verbose=true; top_k=N') or {JSONLINES}")


def _top_k(text: str, num_classes: int) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise RequestError(406, f"top_k must be a whole number 1..10000, got {shown(text)}")
    return min(int(text), num_classes)


def decode(body: bytes, content_type: str, channels: int, *,
           max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[np.ndarray]:
    """A request body to HWC uint8 images: one encoded image, or a uint8 ``HxWxC``/``NxHxWxC`` npy array."""
    if not body:
        raise RequestError(400, "the request body is empty; send the image bytes")
    kind = check_content_type(content_type)
    if kind == NPY_TYPE:
        return _decode_npy(body, channels, max_pixels)
    try:
        img = decode_image(body, channels=channels, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise RequestError(400, str(e)) from None
    except DataError as e:
        raise RequestError(400, f"the body is not a decodable JPEG or PNG image: {e}") from None
    return [img]


def _decode_npy(body: bytes, channels: int, max_pixels: int) -> list[np.ndarray]:
    """Parse the npy header first: shape and dtype are checked against the body before any array is built."""
    f = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported (use 1.0 or 2.0)")
        shape, fortran, dtype = read_header[version](f)  # a literal of at most 10,000 bytes, checked by numpy
    except (ValueError, SyntaxError, TypeError, OverflowError, RecursionError) as e:
        raise RequestError(400, f"the body is not a .npy array: {e}") from None
    if dtype != np.uint8:
        raise RequestError(400, f"the array's dtype is {dtype}; send uint8 pixels (0..255)")
    if len(shape) == 2 and channels == 1:
        shape = (*shape, 1)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[-1] != channels or min(shape) < 1:
        raise RequestError(400, f"the array's shape is {tuple(shape)}; send HxWx{channels} or NxHxWx{channels} "
                                f"uint8 (the model has {channels} channel{'s' if channels > 1 else ''})")
    n, h, w, _ = shape
    if n > MAX_IMAGES_PER_REQUEST:
        raise RequestError(400, f"the array holds {n} images, more than {MAX_IMAGES_PER_REQUEST} per request; "
                                f"split it, or use batch transform")
    if h * w > max_pixels:
        raise RequestError(400, f"the images are {w}x{h} pixels ({w * h:,}), more than the limit of {max_pixels:,}")
    data = body[f.tell():]
    if len(data) != n * h * w * channels:
        raise RequestError(400, f"the array declares {n * h * w * channels:,} bytes of pixels but the body holds "
                                f"{len(data):,}")
    arr = np.frombuffer(data, dtype=np.uint8)
    arr = arr.reshape((n, h, w, channels), order="F" if fortran else "C")
    return [np.ascontiguousarray(a) for a in arr]


def encode(probs: np.ndarray, answer: Answer, class_names: Sequence[str] | None = None,
           multi_label: bool = False) -> bytes:
    """Probabilities ``[N, C]`` as the client asked: a bare JSON array (a list of them for N > 1), JSON lines of
    ``{"prediction": [...]}``, or the verbose object with class names and top-k."""
    rows = [[float(p) for p in row] for row in probs]
    if answer.media_type == JSONLINES:
        return "".join(json.dumps({"prediction": r}) + "\n" for r in rows).encode()
    if answer.verbose:
        return json.dumps({"predictions": [_verbose(r, answer.top_k, class_names, multi_label) for r in rows]}).encode()
    return json.dumps(rows[0] if len(rows) == 1 else rows).encode()


def _verbose(row: list[float], top_k: int, names: Sequence[str] | None, multi_label: bool) -> dict[str, Any]:
    def name(i: int) -> str:
        return names[i] if names else str(i)

    order = sorted(range(len(row)), key=lambda i: -row[i])
    best = order[0]
    out: dict[str, Any] = {
        "label": best, "class": name(best), "probability": row[best],
        "top_k": [{"label": i, "class": name(i), "probability": row[i]} for i in order[:top_k]],
        "probabilities": row,
    }
    if multi_label:  # independent per-class decisions: every class at or above one half
        out["labels"] = [i for i in range(len(row)) if row[i] >= 0.5]
        out["classes"] = [name(i) for i in out["labels"]]
    return out
