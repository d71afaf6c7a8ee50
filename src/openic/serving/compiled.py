"""``--compile``: the torch backends through ``torch.compile`` (inductor, weights frozen into the graph).

At serving batch sizes the eager network spends much of its time between operators; inductor fuses BatchNorm,
ReLU and the residual adds around oneDNN's convolutions. Measured on a 2-core AMX CPU (``bench/RESULTS.md``),
ResNet-18 at 32x32 in bfloat16: batch 1 from 5.0 to 2.3 ms, batch 64 from 79 to 49 ms.

One static graph per *bucket* (1, 2, 4, ... up to the largest batch the server forms): a batch is padded with
zero images up to its bucket (rows are independent in eval mode) and the padding's rows dropped. Every bucket
is compiled at load, before ``/ping`` answers, so no request waits for the compiler; graphs that could not be
reused are an error (``fail_on_recompile_limit_hit``), never a silent return to eager execution.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from openic.errors import ClientError
from openic.serving.handler import BF16_TOLERANCE, TorchBackend

log = logging.getLogger(__name__)

MAX_COMPILED_BATCH = 1024


def buckets(max_batch: int) -> list[int]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself: every batch size has a bucket within 2x."""
    if not 1 <= max_batch <= MAX_COMPILED_BATCH:
        raise ClientError(f"the largest compiled batch must be 1..{MAX_COMPILED_BATCH}, got {max_batch}")
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return [*sizes, max_batch]


class CompiledBackend(TorchBackend):
    """``backend``'s network and precision with inductor's forward, one graph per bucket, all compiled here and
    checked against ``backend`` on a probe batch (as the ONNX export is)."""

    def __init__(self, backend: TorchBackend, image_shape: tuple[int, int, int], max_batch: int) -> None:
        super().__init__(backend.model, backend.dtype)
        self.name = f"{backend.name}+compiled"
        self.buckets = buckets(max_batch)
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit += len(self.buckets)  # room for this model's graphs beside earlier ones
        dynamo_config.fail_on_recompile_limit_hit = True
        self.forward = torch.compile(self.model, dynamic=False)
        tic = time.perf_counter()
        for size in self.buckets:
            self._run(np.zeros((size, *image_shape), np.float32))
        log.info("compiled %s for batches of %s in %.1f s", self.name, ", ".join(map(str, self.buckets)),
                 time.perf_counter() - tic)
        probe = np.random.default_rng(0).integers(0, 256, (min(4, max_batch), *image_shape)).astype(np.float32)
        gap = float(np.abs(_softmax(self(probe)) - _softmax(backend(probe))).max())
        limit = 1e-4 if backend.dtype == torch.float32 else BF16_TOLERANCE
        if gap > limit:
            raise ClientError(f"--compile: the compiled model disagrees with {backend.name} by {gap:.2g} per "
                              f"probability on a probe batch (limit {limit}); serve without --compile")

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch._inductor.config as inductor_config

        try:
            with inductor_config.patch(freezing=True):
                return super().__call__(x)
        except Exception as e:  # noqa: BLE001 - inductor raises its own types (no C++ compiler, an unsupported op)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ClientError(f"--compile: torch.compile failed for a batch of {len(x)} ({type(e).__name__}: "
                              f"{first}); it needs a C++ compiler (g++); serve without --compile") from e

    def __call__(self, x: np.ndarray) -> np.ndarray:
        top, out = self.buckets[-1], []
        for start in range(0, len(x), top):
            chunk = x[start:start + top]
            size = next(b for b in self.buckets if b >= len(chunk))
            if size > len(chunk):  # a full bucket goes as it is, without a copy
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(self._run(chunk)[:min(top, len(x) - start)])
        return np.concatenate(out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
