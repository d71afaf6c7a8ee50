"""SageMaker's ``augmentation_type`` presets, re-done as batched uint8 tensor ops (MXNet ``aug_default`` semantics).

SageMaker's container feeds MXNet's ``ImageRecordIter`` with ``set_data_aug_level`` from MXNet's
``example/image-classification/common/data.py``; the per-image work is ``src/io/image_aug_default.cc`` followed by
the mirror in ``iter_image_recordio_2.cc``. Per training image, in MXNet's order:

1. ``resize``: shorter side to ``resize`` with MXNet's integer sizes (``long = resize * long // short``), bilinear.
2. level 3 only: ``cv::warpAffine`` with rotation (integer degrees in [-10, 10]), shear ``m`` in [-0.1, 0.1]
   (``(x, y) -> (x + m*y, y)``) and aspect ratio ``r`` in [0.75, 1.25] (x scaled by ``2/(1+r)``, y by
   ``2r/(1+r)``), about the point (w/2, h/2) (MXNet's centre, not (w-1)/2), output the same size, bilinear,
   border filled with ``fill_value``. MXNet's C++ default fill is 255, but ``data.py`` (which SageMaker's level
   presets come from) passes ``fill_value=127``; we use 127 by default.
3. crop ``H x W``: random offsets (uniform integers, bounds inclusive) for levels >= 1, else centred
   ``((h-H)//2, (w-W)//2)``. Images smaller than ``H x W`` are an error (MXNet: "input image size smaller than
   input shape").
4. level >= 2: one offset per image for H, L, S drawn as ``int(u * 2R - R)`` (C++ truncation toward zero), R =
   36/50/50, added in OpenCV's 8-bit HLS space (H in 0..180) and **clipped** to [0, 180] / [0, 255] / [0, 255]
   as MXNet does (hue does not wrap; H = 180 reads back as 0). The RGB->HLS->RGB round trip itself is lossy in
   uint8, and MXNet pays it even when the drawn offsets are 0; so do we.
5. level >= 1: horizontal mirror with probability 0.5.

Steps 2 and 3 are fused here: the warp's sampling grid is built only for the crop window. Steps 4 and 5 act per
pixel, so they run on whole batches (``train_photometric``) even when steps 1-3 ran per image
(``train_geometry``) in ``DataLoader`` workers. Random numbers come from an explicit ``torch.Generator``; the
draws do not reproduce MXNet's RNG stream, only its distributions.

Grayscale (C=1): MXNet decodes with ``imdecode(..., 0)`` and its HLS step then calls ``cvtColor(BGR2HLS)`` on a
1-channel image, which OpenCV rejects, so MXNet cannot train C=1 with ``crop_color*``. We apply only the L offset
to gray images: that is exactly what MXNet's HLS step does to a gray RGB pixel whenever the S offset is <= 0.

Numerics (checked against opencv-python; MXNet 1.9.1 links OpenCV 3.4.2):
- resize: OpenCV's 8-bit ``INTER_LINEAR`` fixed-point arithmetic, reproduced in integer tensor ops: bit-exact.
- HLS: OpenCV's float32 formulas for 8-bit images with round-half-even. RGB->HLS follows OpenCV 3.4's SSE2 path
  (``S = diff / (2 - (max + min))``, hue as multiply-then-add); OpenCV >= 4 computes the hue with a fused
  multiply-add, which moves H by 1 for ~0.01 % of colours. HLS->RGB matches OpenCV bit for bit on all inputs.
- warp: float bilinear (``grid_sample``) rounded to uint8. opencv-python 5 agrees except for rare +-1; OpenCV
  3.4 quantises source positions to 1/32 pixel, so expect more +-1 differences there (not checked).

This module imports only torch and ``openic.errors``: serving imports ``inference_transform`` and
``to_float_input`` from here, and serving must not pull in training code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from openic.errors import ClientError
from openic.formats.images import resized_hw
from openic.hyperparams import MAX_RESIZE, parse_image_shape

FILL_VALUE = 127
_FLT_EPSILON = 1.1920928955078125e-07  # C's FLT_EPSILON: OpenCV's "grey pixel" threshold in RGB2HLS


@dataclass(frozen=True)
class AugmentParams:
    """MXNet ``ImageRecordIter`` augmentation arguments (names as in ``image_aug_default.cc``)."""

    rand_crop: bool = False
    rand_mirror: bool = False
    random_h: int = 0
    random_s: int = 0
    random_l: int = 0
    max_rotate_angle: int = 0
    max_shear_ratio: float = 0.0
    max_aspect_ratio: float = 0.0

    @property
    def color(self) -> bool:
        return bool(self.random_h or self.random_s or self.random_l)

    @property
    def affine(self) -> bool:
        return self.max_rotate_angle > 0 or self.max_shear_ratio > 0 or self.max_aspect_ratio != 0


# Values of MXNet's set_data_aug_level(aug, level) for levels 0..3.
PRESETS: dict[str | None, AugmentParams] = {
    None: AugmentParams(),
    "crop": AugmentParams(rand_crop=True, rand_mirror=True),
    "crop_color": AugmentParams(rand_crop=True, rand_mirror=True, random_h=36, random_s=50, random_l=50),
    "crop_color_transform": AugmentParams(rand_crop=True, rand_mirror=True, random_h=36, random_s=50, random_l=50,
                                          max_rotate_angle=10, max_shear_ratio=0.1, max_aspect_ratio=0.25),
}
AUGMENTATION_TYPES = tuple(k for k in PRESETS if k is not None)


def _check_batch(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 [N, C, h, w] tensor, got {x.dtype} with shape {tuple(x.shape)}")


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


_COEF_SCALE = 2048  # OpenCV INTER_RESIZE_COEF_SCALE: resize weights are 11-bit fixed point


def _linear_taps(src: int, dst: int, clamp_weights: bool, device: torch.device) -> tuple[Tensor, ...]:
    """OpenCV's INTER_LINEAR source indices and fixed-point weights along one axis (``resize.cpp``).

    OpenCV zeroes the fraction at the borders for x but only clips the row indices for y (``clamp_weights``).
    """
    scale = 1.0 / (dst / src)  # OpenCV keeps inv_scale = dst / src and inverts it, in double
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    s = f.floor()
    f = f - s
    s = s.long()
    if clamp_weights:
        edge = (s < 0) | (s >= src - 1)
        f = torch.where(edge, torch.zeros_like(f), f)
        s = s.clamp(0, src - 1)
    w0 = ((1 - f) * _COEF_SCALE).round().int()
    w1 = (f * _COEF_SCALE).round().int()
    return (s.clamp(0, src - 1).to(device), (s + 1).clamp(0, src - 1).to(device), w0.to(device), w1.to(device))


def resize_to(x: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of a uint8 batch, bit-exact with OpenCV's ``cv::resize(INTER_LINEAR)`` for 8-bit images.

    OpenCV works in fixed point (11-bit weights, horizontal pass in int, vertical pass with shifts); doing the
    same integer steps gives MXNet's pixels exactly, so validation images match MXNet's, not just approximately.
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    c0, c1, a0, a1 = _linear_taps(w, width, True, x.device)
    r0, r1, b0, b1 = _linear_taps(h, height, False, x.device)
    xi = x.int()
    rows = xi[..., c0] * a0 + xi[..., c1] * a1  # [N, C, h, width], scaled by 2048
    top, bottom = rows[..., r0, :] >> 4, rows[..., r1, :] >> 4
    out = (((b0[:, None] * top) >> 16) + ((b1[:, None] * bottom) >> 16) + 2) >> 2
    return out.clamp_(0, 255).to(torch.uint8)


def shorter_side_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """MXNet's target size for ``resize``: shorter side = ``resize``, longer side scaled with integer division."""
    return resized_hw((height, width), resize)


def resize_shorter(x: Tensor, resize: int) -> Tensor:
    """Resize a uint8 batch so its shorter side is ``resize`` (up or down, as MXNet does); no-op if already so."""
    _check_batch(x)
    return resize_to(x, *shorter_side_size(x.shape[-2], x.shape[-1], resize))


def _check_fits(h: int, w: int, image_shape: tuple[int, int, int], resize: int | None) -> None:
    if h < image_shape[1] or w < image_shape[2]:
        after = f"after resize={resize} " if resize is not None else "(no resize set) "
        raise ClientError(
            f"image of {h}x{w} (HxW) {after}is smaller than image_shape "
            f"{','.join(map(str, image_shape))} (needs at least {image_shape[1]}x{image_shape[2]}); set resize to "
            f"at least {max(image_shape[1:])} or use a smaller image_shape (MXNet: input image size smaller than "
            "input shape)")


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Crop at MXNet's centre offsets ``((h - H) // 2, (w - W) // 2)``."""
    y0, x0 = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., y0 : y0 + height, x0 : x0 + width]


def _crop_at(x: Tensor, ys: Tensor, xs: Tensor, height: int, width: int) -> Tensor:
    """Per-sample crops at offsets ``ys``/``xs`` ([N] int64) as one gather over flattened pixels."""
    n, c, h, w = x.shape
    rows = (ys[:, None] + torch.arange(height, device=x.device))[:, :, None]
    cols = (xs[:, None] + torch.arange(width, device=x.device))[:, None, :]
    idx = (rows * w + cols).view(n, 1, height * width).expand(n, c, height * width)
    return torch.gather(x.reshape(n, c, h * w), 2, idx).view(n, c, height, width)


def _rand(n: int, gen: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) doubles on the generator's device, moved to the CPU (per-image parameters are tiny)."""
    device = gen.device if gen is not None else None
    return torch.rand(n, generator=gen, device=device, dtype=torch.float64).cpu()


def _randint(low: int, high: int, n: int, gen: torch.Generator | None) -> Tensor:
    """Uniform integers in [low, high], both ends included (C++ ``uniform_int_distribution``)."""
    device = gen.device if gen is not None else None
    return torch.randint(low, high + 1, (n,), generator=gen, device=device).cpu()


def affine_matrices(angle_deg: Tensor, shear: Tensor, ratio: Tensor, height: int, width: int) -> Tensor:
    """MXNet's forward warp matrices ``[N, 2, 3]`` (source pixel -> output pixel), as in ``image_aug_default.cc``.

    ``hs = 2 / (1 + ratio)`` and ``ws = ratio * hs`` keep the area; the translation maps (w/2, h/2) to itself.
    """
    rad = angle_deg.double() * (math.pi / 180.0)
    a, b = torch.cos(rad), torch.sin(rad)
    s, ratio = shear.double(), ratio.double()
    hs = 2.0 / (1.0 + ratio)
    ws = ratio * hs
    m00, m01 = hs * a - s * b * ws, hs * b + s * a * ws
    m10, m11 = -b * ws, a * ws
    tx = (width - (m00 * width + m01 * height)) / 2
    ty = (height - (m10 * width + m11 * height)) / 2
    return torch.stack([torch.stack([m00, m01, tx], -1), torch.stack([m10, m11, ty], -1)], -2)


def warp_crop(x: Tensor, matrices: Tensor, ys: Tensor, xs: Tensor, height: int, width: int,
              fill_value: int = FILL_VALUE) -> Tensor:
    """``warpAffine`` (same output size, bilinear, constant border) then crop, computing only the crop window.

    Args:
        x: uint8 ``[N, C, h, w]``.
        matrices: forward matrices ``[N, 2, 3]`` as OpenCV takes them (inverted here, as OpenCV does).
        ys, xs: crop offsets in the warped ``h x w`` image.
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    lin, t = matrices[:, :, :2], matrices[:, :, 2:]
    inv = torch.linalg.inv(lin)
    inv_t = -(inv @ t)
    dev = x.device
    px = (xs[:, None].to(dev, torch.float64) + torch.arange(width, device=dev, dtype=torch.float64))[:, None, :]
    py = (ys[:, None].to(dev, torch.float64) + torch.arange(height, device=dev, dtype=torch.float64))[:, :, None]
    inv, inv_t = inv.to(dev), inv_t.to(dev)
    sx = inv[:, 0, 0, None, None] * px + inv[:, 0, 1, None, None] * py + inv_t[:, 0, 0, None, None]
    sy = inv[:, 1, 0, None, None] * px + inv[:, 1, 1, None, None] * py + inv_t[:, 1, 0, None, None]
    # grid_sample(align_corners=False): pixel centre i sits at (2i + 1) / size - 1
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1).float()
    # Zero padding on (x - fill) is a constant border of `fill`, blended at the edge like OpenCV's BORDER_CONSTANT.
    shifted = x.float() - fill_value
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _to_uint8(out.add_(fill_value))


# torch.where is ~25x slower than a multiply on CPU here, so selections below are blends with 0/1 float masks:
# a * 1 + b * 0 == a exactly for finite values, which keeps OpenCV's float32 results bit for bit.


def _hls_planes(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 RGB ``[N, 3, h, w]`` to OpenCV 8-bit H, L, S planes ``[N, h, w]`` (float32 integers)."""
    v = x.float() * (1.0 / 255.0)
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    vmax = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    diff, total = vmax - vmin, vmax + vmin
    light = total * 0.5
    grey = (diff <= _FLT_EPSILON).float()  # OpenCV leaves H = S = 0 there; uint8 input: diff is 0 or >= 1/255
    low = (light < 0.5).float()
    # SSE2 path: diff / (2 - (max + min)), not the scalar 2 - max - min; `+ grey` avoids 0/0 (diff is 0 there)
    sat = diff / (total * low + (2 - total) * (1 - low) + grey)
    rmax = (vmax == r).float()
    gmax = (vmax == g).float() * (1 - rmax)
    bmax = 1 - rmax - gmax
    d60 = torch.full_like(diff, 60.0).div_(diff + grey)  # a true division: `60.0 / t` is computed as 60 * (1 / t)
    hue = ((g - b) * rmax + (b - r) * gmax + (r - g) * bmax) * d60 + (120.0 * gmax + 240.0 * bmax)
    hue += 360.0 * (hue < 0).float()
    return (hue * 0.5).round_(), (light * 255.0).round_(), (sat * 255.0).round_()


def _rgb_planes(hue8: Tensor, light8: Tensor, sat8: Tensor) -> Tensor:
    """OpenCV 8-bit H (0..180), L, S planes (float32 integers ``[N, h, w]``) to uint8 RGB ``[N, 3, h, w]``."""
    hue = hue8 * torch.tensor(6.0 / 180.0, dtype=torch.float32)  # float32 hscale, as OpenCV
    light, sat = light8 * (1.0 / 255.0), sat8 * (1.0 / 255.0)
    low = (light <= 0.5).float()
    p2 = light * (sat + 1) * low + (light + sat - light * sat) * (1 - low)
    p1 = light * 2 - p2  # S = 0 gives p1 = p2 = light, so OpenCV's grey branch needs no special case
    hue -= 6.0 * (hue >= 6).float()  # OpenCV's "while (h >= 6) h -= 6"; H is in 0..180 here
    sector = hue.floor()
    frac = hue - sector
    span = p2 - p1
    rising, falling = p1 + span * frac, p1 + span * (1 - frac)
    s0, s1, s2, s3, s4, s5 = ((sector == i).float() for i in range(6))
    # OpenCV's sector table {{1,3,0}, {1,0,2}, {3,0,1}, {0,2,1}, {0,1,3}, {2,1,0}} (B, G, R from p2, p1, fall, rise)
    red = p2 * (s5 + s0) + falling * s1 + p1 * (s2 + s3) + rising * s4
    green = rising * s0 + p2 * (s1 + s2) + falling * s3 + p1 * (s4 + s5)
    blue = p1 * (s0 + s1) + rising * s2 + p2 * (s3 + s4) + falling * s5
    return torch.stack([_to_uint8(c.mul_(255.0)) for c in (red, green, blue)], 1)


def rgb_to_hls(x: Tensor) -> Tensor:
    """uint8 RGB ``[N, 3, h, w]`` to OpenCV's 8-bit HLS ``[N, 3, h, w]`` (H 0..180, L, S 0..255), as uint8."""
    _check_batch(x)
    return torch.stack(_hls_planes(x), 1).to(torch.uint8)


def hls_to_rgb(hls: Tensor) -> Tensor:
    """OpenCV 8-bit HLS ``[N, 3, h, w]`` (H 0..180, L, S 0..255) back to uint8 RGB, as ``cvtColor(HLS2RGB)``."""
    _check_batch(hls)
    return _rgb_planes(*hls.float().unbind(1))


def hls_jitter(x: Tensor, offsets: Tensor) -> Tensor:
    """Add per-image integer ``offsets`` ``[N, 3]`` (H, S, L order) in OpenCV HLS space, clipped as MXNet clips.

    For C=1 only the L offset is applied (see the module docstring).
    """
    _check_batch(x)
    off = offsets.to(x.device, torch.float32)[:, :, None, None]
    if x.shape[1] == 1:
        return _to_uint8(x.float() + off[:, 2:3])
    if x.shape[1] != 3:
        raise ValueError(f"HLS jitter needs 1 or 3 channels, got {x.shape[1]}")
    hue, light, sat = _hls_planes(x)
    return _rgb_planes((hue + off[:, 0]).clamp_(0, 180), (light + off[:, 2]).clamp_(0, 255),
                       (sat + off[:, 1]).clamp_(0, 255))


class Augmenter:
    """One ``augmentation_type`` preset applied to uint8 ``[N, C, h, w]`` batches.

    ``train_batch = train_photometric(train_geometry(x))``. Geometry (resize, warp, crop) needs same-size inputs to
    batch, so a loader with mixed sizes runs it per image; photometric steps (HLS, mirror) always batch.
    """

    def __init__(self, augmentation_type: str | None, image_shape: tuple[int, int, int], resize: int | None = None,
                 fill_value: int = FILL_VALUE) -> None:
        if augmentation_type not in PRESETS:
            raise ClientError(f"augmentation_type must be one of {', '.join(AUGMENTATION_TYPES)} or unset, "
                              f"got {augmentation_type!r}")
        if resize is not None and not 1 <= resize <= MAX_RESIZE:
            raise ClientError(f"resize must be an integer from 1 to {MAX_RESIZE}, got {resize}")
        self.augmentation_type = augmentation_type
        self.params = PRESETS[augmentation_type]
        self.image_shape = parse_image_shape(image_shape)
        self.resize = resize
        self.fill_value = fill_value

    def __repr__(self) -> str:
        return (f"Augmenter({self.augmentation_type!r}, image_shape={self.image_shape}, resize={self.resize}, "
                f"fill_value={self.fill_value})")

    def _resized(self, x: Tensor) -> Tensor:
        _check_batch(x)
        if x.shape[1] != self.image_shape[0]:
            raise ClientError(f"image has {x.shape[1]} channels but image_shape {self.image_shape} wants "
                              f"{self.image_shape[0]}")
        if self.resize is not None:
            x = resize_shorter(x, self.resize)
        _check_fits(x.shape[-2], x.shape[-1], self.image_shape, self.resize)
        return x

    def eval_batch(self, x: Tensor) -> Tensor:
        """Validation: resize (if set) and centre crop; deterministic."""
        x = self._resized(x)
        return center_crop(x, *self.image_shape[1:]).contiguous()

    def draw_affine(self, n: int, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image (angle in whole degrees, shear, aspect ratio), drawn in MXNet's order and ranges."""
        p = self.params
        shear = _rand(n, gen) * (2 * p.max_shear_ratio) - p.max_shear_ratio
        angle = _randint(-p.max_rotate_angle, p.max_rotate_angle, n, gen)  # uniform_int_distribution: inclusive
        ratio = _rand(n, gen) * (2 * p.max_aspect_ratio) - p.max_aspect_ratio + 1
        return angle, shear, ratio

    def draw_hls_offsets(self, n: int, gen: torch.Generator | None = None) -> Tensor | None:
        """Per-image (H, S, L) offsets ``[N, 3]`` as MXNet draws them: ``int(u * 2R - R)``; None without colour."""
        p = self.params
        if not p.color:
            return None
        limits = torch.tensor([p.random_h, p.random_s, p.random_l], dtype=torch.float64)
        return torch.trunc(_rand(3 * n, gen).view(n, 3) * (2 * limits) - limits)

    def train_geometry(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Resize, warp (level 3) and crop: MXNet's ``aug_default`` up to, not including, the HLS step."""
        p = self.params
        if not p.rand_crop and not p.affine:
            return self.eval_batch(x)
        x = self._resized(x)
        n, (h, w), (height, width) = x.shape[0], x.shape[-2:], self.image_shape[1:]
        affine = self.draw_affine(n, gen) if p.affine else None  # MXNet draws these before the crop offsets
        if p.rand_crop:
            ys, xs = _randint(0, h - height, n, gen), _randint(0, w - width, n, gen)
        else:
            ys, xs = torch.full((n,), (h - height) // 2), torch.full((n,), (w - width) // 2)
        ys, xs = ys.to(x.device), xs.to(x.device)
        if affine is not None:
            return warp_crop(x, affine_matrices(*affine, h, w), ys, xs, height, width, self.fill_value)
        return _crop_at(x, ys, xs, height, width)

    def train_photometric(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """HLS jitter (levels 2, 3) then random mirror (levels 1-3) on a cropped uint8 batch; never modifies ``x``."""
        _check_batch(x)
        n = x.shape[0]
        offsets = self.draw_hls_offsets(n, gen)
        if offsets is not None:
            x = hls_jitter(x, offsets)
        if self.params.rand_mirror:
            flip = (_rand(n, gen) < 0.5).nonzero().squeeze(1).to(x.device)
            x = x.clone() if offsets is None else x  # hls_jitter already returned a fresh tensor
            x[flip] = x[flip].flip(-1)
        return x

    def train_batch(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """The full training augmentation: uint8 ``[N, C, h, w]`` -> uint8 ``[N, C, H, W]``."""
        return self.train_photometric(self.train_geometry(x, gen), gen)


def inference_transform(x: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
    """What the endpoint does: resize straight to ``H x W`` (aspect ratio not kept, no crop); uint8 in and out.

    Accepts ``[C, h, w]`` or ``[N, C, h, w]``; always returns ``[N, C, H, W]``.
    """
    if x.dim() == 3:
        x = x[None]
    _check_batch(x)
    channels, height, width = parse_image_shape(image_shape)
    if x.shape[1] != channels:
        raise ClientError(f"image has {x.shape[1]} channels but the model expects {channels} (image_shape "
                          f"{','.join(map(str, image_shape))})")
    return resize_to(x, height, width).contiguous()


def to_float_input(x: Tensor, device: torch.device | str | None = None, channels_last: bool = False) -> Tensor:
    """uint8 images to the network's float32 input: raw 0..255 values, no mean/std (the first layer is a BatchNorm).

    Moves to ``device`` while still uint8 (4x fewer bytes), then converts; ``channels_last`` sets that memory format.
    """
    if device is not None:
        x = x.to(device, non_blocking=True)
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return x.to(dtype=torch.float32, memory_format=fmt)
