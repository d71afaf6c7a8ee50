"""Whether this machine computes in bfloat16 natively, for the training and serving paths that use it."""

from __future__ import annotations

import functools

import torch


def native_bf16() -> bool:
    """A GPU, or a CPU with AMX or AVX-512 BF16 (oneDNN's check). Elsewhere bfloat16 is emulated: on a 2-core
    AVX2 EPYC a ResNet-18 training step ran ~20x slower than in float32."""
    return torch.cuda.is_available() or cpu_native_bf16()


@functools.cache
def cpu_native_bf16() -> bool:
    """This CPU has AMX or AVX-512 BF16 (oneDNN's check), whatever GPUs there are."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
