"""The network's convolution: ``nn.Conv2d``, with faster paths for 3x3 convolutions on small CPU feature maps.

Why: on a 2-core Xeon with AMX, oneDNN's bfloat16 kernels run the 3x3 convolutions of a ResNet's last stage at
28–32 px input (512 channels on a 4x4 map) at a third of the rate of the same FLOPs on larger maps; their backward
pass alone was 30 % of a ResNet-18 training step. The same product written as one matrix multiply over the gathered
3x3 patches (im2col) runs on oneDNN's AMX GEMM instead: the step went from ~285 to ~360 images/s (bench/RESULTS.md,
2026-12-07). The same held for 7x7 maps from 512 input channels, and not for 7x7 maps of 256 channels, 4x4 maps
under 256 channels or any larger map, which keep ``F.conv2d``. In float32 the GEMM is no faster, but the plain NCHW
layout is (see :class:`Conv2d`). The parameters are ``nn.Conv2d``'s, so state dicts, the MXNet mapping and ONNX
export (float32) are unchanged. Results are the convolution's up to bfloat16 rounding: the forward pass and the
weight gradient round as oneDNN's do, the input gradient sums its nine patch gradients in bfloat16 (relative error
4.4e-3 against float64 at 512 channels on 4x4, oneDNN's 2.8e-3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openic.models.precision import cpu_native_bf16

# The GEMM path's reach, from forward + backward timings (bench/RESULTS.md, 2026-12-07 evening):
GEMM_MAX_OUTPUT_PIXELS = 16  # a 4x4 map or smaller: ResNet stage 4 at 28x28 or 32x32 input ...
GEMM_MIN_CHANNELS = 256  # ... from 256 input channels (batch 128: 6.5 vs 9.0 ms; 128 a tie, narrower layers lose)
# and 7x7 maps from 512 input channels (stage 4 at 224x224): 17.6 instead of 32.5 ms at batch 16, 65 instead of
# 109 ms at batch 64; with 256 channels at 7x7 oneDNN stays faster
GEMM_WIDE_MAX_OUTPUT_PIXELS, GEMM_WIDE_MIN_CHANNELS = 49, 512
PLAIN_LAYOUT_MIN_BATCH = 32  # at batch 1 the plain layout was slower (torch runs its own small-input kernel)
_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
_NATIVE_BF16 = cpu_native_bf16()  # read once: the check is not traceable by torch.compile


def _bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _computes_in_bf16(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.conv2d(x, weight)`` would compute in bfloat16 here: under bf16 autocast (which casts float32,
    not float64), or with both in bfloat16 (a mix is an error F.conv2d must raise, not one to paper over)."""
    if _bf16_autocast():
        return x.dtype in (torch.float32, torch.bfloat16)
    return x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16


def im2col_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding)`` (square kernel, no bias, groups 1) as one matrix
    multiply; the result is NCHW-shaped in channels-last memory (what oneDNN returns for channels-last input)."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    patches = [xp[:, i : i + span_h : stride, j : j + span_w : stride, :] for i in range(k) for j in range(k)]
    cols = torch.cat(patches, 3)
    flat_w = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], k * k * c)  # (out, kh, kw, in): the cols' order
    out = cols.reshape(n * ho * wo, k * k * c) @ flat_w.t()
    return out.view(n, ho, wo, weight.shape[0]).permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with two paths for a CPU 3x3 convolution (stride 1 or 2, padding 1, no bias) on a small map:

    * bfloat16 (bf16 autocast, or bf16 input and weights) on a CPU with native bfloat16:
      :func:`im2col_conv2d` when the output has at most :data:`GEMM_MAX_OUTPUT_PIXELS` pixels from
      :data:`GEMM_MIN_CHANNELS` input channels up, or is 7x7 or smaller from 512 input channels up;
    * float32, channels-last input, batch of at least :data:`PLAIN_LAYOUT_MIN_BATCH`, output of at most
      :data:`GEMM_MAX_OUTPUT_PIXELS` pixels, on an AVX-512 CPU: oneDNN's plain-layout (NCHW) kernel on copies,
      which ran a 512-channel 4x4 map's forward and backward 1.5x faster than its channels-last one (the
      ResNet-18 fp32 step gained 4-7 %); the result is handed back channels-last. AVX2 CPUs were not measured,
      so they keep the default.
    """

    def _out_pixels(self, x: torch.Tensor) -> int | None:
        """Output pixels per image of a CPU 3x3 convolution the fast paths can take, else None."""
        if x.device.type != "cpu" or x.dim() != 4 or self.kernel_size != (3, 3) or self.padding != (1, 1):
            return None
        if self.stride not in ((1, 1), (2, 2)) or self.groups != 1 or self.dilation != (1, 1) or self.bias is not None:
            return None
        if self.padding_mode != "zeros":
            return None
        s = self.stride[0]
        return ((x.shape[2] - 1) // s + 1) * ((x.shape[3] - 1) // s + 1)

    def _path(self, x: torch.Tensor) -> str | None:
        """``"gemm"``, ``"plain"`` or None (``F.conv2d`` as it is), decided per call: shapes and dtypes vary."""
        pixels = self._out_pixels(x)
        if pixels is None:
            return None
        if _computes_in_bf16(x, self.weight):
            if not _NATIVE_BF16:
                return None
            if self.in_channels >= GEMM_WIDE_MIN_CHANNELS:
                return "gemm" if pixels <= GEMM_WIDE_MAX_OUTPUT_PIXELS else None
            return "gemm" if self.in_channels >= GEMM_MIN_CHANNELS and pixels <= GEMM_MAX_OUTPUT_PIXELS else None
        plain = (pixels <= GEMM_MAX_OUTPUT_PIXELS and x.dtype == torch.float32 and not _bf16_autocast() and _AVX512
                 and x.shape[0] >= PLAIN_LAYOUT_MIN_BATCH and x.is_contiguous(memory_format=torch.channels_last)
                 and not x.is_contiguous())
        return "plain" if plain else None

    def uses_gemm(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the matrix-multiply path."""
        return self._path(x) == "gemm"

    def uses_plain_layout(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` runs the float32 convolution on NCHW copies of a channels-last input."""
        return self._path(x) == "plain"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self._path(x)
        if path == "gemm":
            return im2col_conv2d(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), self.stride[0], 1)
        if path == "plain":
            y = F.conv2d(x.contiguous(), self.weight.contiguous(), None, self.stride, self.padding)
            return y.contiguous(memory_format=torch.channels_last)
        return super().forward(x)
