"""MXNet's pre-activation ResNet (v2), the network SageMaker's built-in image classification trains.

The layer structure and the module names follow MXNet's ``example/image-classification/symbols/resnet.py`` so
that a SageMaker ``.params`` file maps onto this model by a fixed rule (:func:`mxnet_param_name`):
``stage1.unit1.conv1.weight`` ↔ ``stage1_unit1_conv1_weight``, ``bn1.weight`` ↔ ``bn1_gamma`` and so on.

Facts taken from MXNet 1.9.1 (see ``shared/fixtures/mxnet_models/README.md``):

* the input is raw 0..255 pixels; the first layer ``bn_data`` is a BatchNorm with ``fix_gamma=True`` (its gamma is
  always 1 and never trained, its beta is learned);
* every BatchNorm uses eps 2e-5 and MXNet momentum 0.9 (PyTorch momentum 0.1);
* unit 1 of every stage, stage 1 included, has a 1x1 projection shortcut ``sc`` (no BatchNorm) on the *activated*
  input; other units add the raw input; nothing follows the addition;
* convolutions have no bias; only ``fc1`` has one.

Known deviation: PyTorch updates ``running_var`` with the unbiased batch variance and MXNet with the biased one,
a relative difference of 1/(N-1) per update (N = batch x H x W), which only matters when comparing training runs.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from openic.errors import ClientError
from openic.hyperparams import MAX_CLASSES, parse_image_shape
from openic.models.conv import Conv2d
from openic.models.depths import DEPTHS, SMALL_STEM_MAX_HEIGHT, Layout, min_image_side

logger = logging.getLogger(__name__)

BN_EPS = 2e-5
BN_MOMENTUM = 0.1  # PyTorch convention; MXNet's momentum=0.9 means moving = 0.9*moving + 0.1*batch


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class FixedGammaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose scale is always 1, as MXNet's ``fix_gamma=True``.

    ``weight`` exists only so the state dict has MXNet's ``bn_data_gamma`` slot. The forward pass never reads it,
    so an imported checkpoint's stored value (about 0.99998 after weight decay, see the fixtures README) is
    ignored exactly as MXNet ignores it, and ``requires_grad=False`` keeps optimizers from touching it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d does (used by precise-BN re-estimation)
                momentum = 1.0 / float(self.num_batches_tracked)
        # On a CPU, training statistics over 3 channels in channels-last memory ran 5-8x slower than over the
        # plain layout (forward + backward: 5.0 vs 1.0 ms at 128x3x28x28, 36 vs 4 ms at 16x3x224x224), so the
        # input's layer computes on a plain copy and hands the stem channels-last memory back (GPUs: unmeasured,
        # unchanged; one channel is both layouts at once, so nothing changes for gray images).
        plain = self.training and x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last)
        y = F.batch_norm(x.contiguous() if plain else x, self.running_mean, self.running_var, None, self.bias,
                         self.training, momentum or 0.0, self.eps)
        return y.contiguous(memory_format=torch.channels_last) if plain else y


class BasicBlock(nn.Module):
    """Pre-activation unit with two 3x3 convolutions: ``conv2(relu(bn2(conv1(relu(bn1(x))))))`` + shortcut."""

    def __init__(self, c_in: int, width: int, stride: int, project: bool) -> None:
        super().__init__()
        self.bn1 = _bn(c_in)
        self.conv1 = _conv(c_in, width, 3, stride)
        self.bn2 = _bn(width)
        self.conv2 = _conv(width, width, 3)
        self.sc = _conv(c_in, width, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = F.relu(self.bn1(x))
        r = self.conv2(F.relu(self.bn2(self.conv1(a1))))
        return r + (x if self.sc is None else self.sc(a1))


class Bottleneck(nn.Module):
    """Pre-activation unit 1x1 (width/4) → 3x3 (width/4, carries the stride) → 1x1 (width), plus shortcut."""

    def __init__(self, c_in: int, width: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = width // 4
        self.bn1 = _bn(c_in)
        self.conv1 = _conv(c_in, mid, 1)
        self.bn2 = _bn(mid)
        self.conv2 = _conv(mid, mid, 3, stride)
        self.bn3 = _bn(mid)
        self.conv3 = _conv(mid, width, 1)
        self.sc = _conv(c_in, width, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = F.relu(self.bn1(x))
        r = self.conv2(F.relu(self.bn2(self.conv1(a1))))
        r = self.conv3(F.relu(self.bn3(r)))
        return r + (x if self.sc is None else self.sc(a1))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

class ResNet(nn.Module):
    """The whole network: ``bn_data`` → stem (``conv0`` [+ ``bn0``, ReLU, max-pool]) → stages → ``bn1`` → ReLU →
    global average pool → ``fc1``.

    Input: float tensor (N, C, H, W) of raw 0..255 pixel values (RGB or gray), no mean/std applied outside.
    Output: logits (N, num_classes); MXNet's softmax is not part of the module.
    """

    def __init__(self, layout: Layout, num_classes: int, in_chans: int = 3, small_stem: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.small_stem = small_stem
        self.bn_data = FixedGammaBatchNorm2d(in_chans)
        self.conv0 = _conv(in_chans, layout.stem_width, 3 if small_stem else 7, 1 if small_stem else 2)
        self.bn0 = None if small_stem else _bn(layout.stem_width)
        c_in = layout.stem_width
        self.stage_names: tuple[str, ...] = tuple(f"stage{s}" for s in range(1, len(layout.units) + 1))
        for s, (name, units, width) in enumerate(zip(self.stage_names, layout.units, layout.widths, strict=True)):
            blocks = []
            for u in range(units):
                stride = 2 if s > 0 and u == 0 else 1
                blocks.append((f"unit{u + 1}", _BLOCKS[layout.block](c_in, width, stride, project=u == 0)))
                c_in = width
            self.add_module(name, nn.Sequential(OrderedDict(blocks)))
        self.num_features = c_in
        self.bn1 = _bn(c_in)
        self.fc1 = nn.Linear(c_in, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MXNet's ``Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)``: N(0, 2/fan_in) for weights."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _xavier_in(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # gamma 1, beta 0, mean 0, var 1, as MXNet's initializer

    def reset_classifier(self, num_classes: int | None = None) -> None:
        """Replace ``fc1`` by a freshly initialised layer (transfer learning), optionally with a new class count."""
        num_classes = self.fc1.out_features if num_classes is None else num_classes
        _check_num_classes(num_classes)
        p = self.fc1.weight
        self.fc1 = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)
        _xavier_in(self.fc1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) that feed ``fc1``."""
        x = self.conv0(self.bn_data(x))
        if self.bn0 is not None:
            x = F.max_pool2d(F.relu(self.bn0(x)), 3, 2, 1)  # padding never matters: the input is post-ReLU
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return F.relu(self.bn1(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.forward_features(x))


def _xavier_in(m: nn.Conv2d | nn.Linear) -> None:
    fan_in = m.weight[0].numel()
    with torch.no_grad():
        m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        if m.bias is not None:
            m.bias.zero_()


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ClientError(f"num_classes must be an integer from 1 to {MAX_CLASSES}, got {num_classes!r}")


def create_model(num_layers: int, num_classes: int, image_shape: tuple[int, int, int]) -> ResNet:
    """Build SageMaker's ResNet for ``num_layers`` and ``image_shape`` (C, H, W), randomly initialised.

    Raises:
        ClientError: unsupported depth, channel count, class count, or an image smaller than the network's
            total stride (see :func:`min_image_side`).
    """
    if num_layers not in DEPTHS:
        supported = ", ".join(str(d) for d in sorted(DEPTHS))
        raise ClientError(f"num_layers={num_layers!r} is not supported; supported depths: {supported}")
    _check_num_classes(num_classes)
    c, h, w = parse_image_shape(image_shape)
    low = min_image_side(num_layers, h)
    if h < low or w < low:
        raise ClientError(
            f"image_shape {c},{h},{w} is too small for num_layers={num_layers}: H and W must be at least {low}"
        )
    model = ResNet(DEPTHS[num_layers], num_classes, in_chans=c, small_stem=h <= SMALL_STEM_MAX_HEIGHT)
    logger.debug("created resnet-%d for %d,%d,%d with %d classes", num_layers, c, h, w, num_classes)
    return model


_MXNET_LEAF = {"running_mean": "moving_mean", "running_var": "moving_var"}


def mxnet_param_name(torch_name: str) -> str:
    """MXNet checkpoint name (without ``arg:``/``aux:``) of a :class:`ResNet` state-dict key.

    ``stage2.unit1.bn1.weight`` → ``stage2_unit1_bn1_gamma``; ``fc1.bias`` → ``fc1_bias``;
    ``bn_data.running_var`` → ``bn_data_moving_var``. BatchNorm modules are the ones whose name starts with ``bn``.

    Raises:
        ValueError: the key has no MXNet counterpart (``num_batches_tracked``) or is not a parameter/buffer name.
    """
    module, _, leaf = torch_name.rpartition(".")
    if not module:
        raise ValueError(f"{torch_name!r} is not a module parameter name")
    is_bn = module.rpartition(".")[2].startswith("bn")
    if leaf in _MXNET_LEAF and is_bn:
        suffix = _MXNET_LEAF[leaf]
    elif leaf == "weight":
        suffix = "gamma" if is_bn else "weight"
    elif leaf == "bias":
        suffix = "beta" if is_bn else "bias"
    else:
        raise ValueError(f"{torch_name!r} has no MXNet counterpart")
    return f"{module.replace('.', '_')}_{suffix}"


def mxnet_name_map(model: ResNet) -> dict[str, str]:
    """``{mxnet_name: state_dict_key}`` for every state-dict entry that MXNet stores (all but the batch counters)."""
    return {mxnet_param_name(k): k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
