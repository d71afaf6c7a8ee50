"""The ResNet depth table, torch-free: the schema takes its ``num_layers`` choices from here.

Adding a depth is one row in ``DEPTHS``: the hyperparameter's valid values, the network built for it and the
minimum image size all follow from the row (``tests/test_depths.py`` proves it with a depth added at run time).

MXNet picks the 3-stage layout by image height (<= 28), which would reject num_layers=18 at 3,28,28 although
AWS's own example uses it, so the layout here follows the depth (spec §6).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

SMALL_STEM_MAX_HEIGHT = 32  # MXNet: a 3x3/1 stem when height <= 32, else 7x7/2 conv + 3x3/2 max-pool (stride 4)


class Layout(NamedTuple):
    """One row of the depth table: unit type, units per stage, stem filters, output filters per stage."""

    block: Literal["basic", "bottleneck"]
    units: tuple[int, ...]
    stem_width: int
    widths: tuple[int, ...]


_BASIC4 = (64, 128, 256, 512)
_BOTTLENECK4 = (256, 512, 1024, 2048)
_SMALL3 = (16, 32, 64)

DEPTHS: dict[int, Layout] = {
    18: Layout("basic", (2, 2, 2, 2), 64, _BASIC4),
    34: Layout("basic", (3, 4, 6, 3), 64, _BASIC4),
    50: Layout("bottleneck", (3, 4, 6, 3), 64, _BOTTLENECK4),
    101: Layout("bottleneck", (3, 4, 23, 3), 64, _BOTTLENECK4),
    152: Layout("bottleneck", (3, 8, 36, 3), 64, _BOTTLENECK4),
    200: Layout("bottleneck", (3, 24, 36, 3), 64, _BOTTLENECK4),
    20: Layout("basic", (3, 3, 3), 16, _SMALL3),
    32: Layout("basic", (5, 5, 5), 16, _SMALL3),
    44: Layout("basic", (7, 7, 7), 16, _SMALL3),
    56: Layout("basic", (9, 9, 9), 16, _SMALL3),
    110: Layout("basic", (18, 18, 18), 16, _SMALL3),
}


def imagenet_depths() -> tuple[int, ...]:
    """4-stage depths (18-200): the ones ImageNet-pretrained weights exist for."""
    return tuple(d for d, row in DEPTHS.items() if len(row.units) == 4)


def min_image_side(num_layers: int, height: int) -> int:
    """Smallest H and W for ``num_layers`` at this height: the network's total stride (stages, times the stem's
    stride). Smaller images would leave the last stage looking mostly at zero padding."""
    stages = len(DEPTHS[num_layers].units)
    return (1 if height <= SMALL_STEM_MAX_HEIGHT else 4) * 2 ** (stages - 1)
