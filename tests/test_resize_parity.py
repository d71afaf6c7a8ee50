"""The two OpenCV-exact bilinear resizes agree pixel for pixel: numpy (im2rec, formats.images) and torch (training
batches, data.transforms). Both claim cv2.resize(INTER_LINEAR); this holds them to each other on every size kind."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openic.data.transforms import resize_shorter as torch_resize_shorter
from openic.data.transforms import resize_to
from openic.formats.images import resize_bilinear
from openic.formats.images import resize_shorter as numpy_resize_shorter


def _both(img: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ours = resize_bilinear(img, height, width)
    batch = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    theirs = resize_to(batch, height, width)[0].permute(1, 2, 0).numpy()
    return ours, theirs


@pytest.mark.parametrize("src,dst", [((32, 32), (28, 28)), ((28, 28), (32, 32)), ((64, 48), (32, 24)),
                                     ((17, 33), (40, 9)), ((1, 5), (3, 3)), ((100, 100), (50, 50)),
                                     ((7, 7), (21, 21)), ((224, 300), (224, 298))])
@pytest.mark.parametrize("channels", [1, 3])
def test_numpy_and_torch_resize_give_equal_pixels(src, dst, channels):
    rng = np.random.default_rng(sum(src) * 31 + sum(dst))
    img = rng.integers(0, 256, (*src, channels), dtype=np.uint8)
    ours, theirs = _both(img, *dst)
    np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), th=st.integers(1, 40), tw=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_resize_parity_property(h, w, th, tw, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours, theirs = _both(img, th, tw)
    np.testing.assert_array_equal(ours, theirs)


def test_shorter_side_rule_is_shared():
    img = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    ours = numpy_resize_shorter(img, 20)
    theirs = torch_resize_shorter(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], 20)[0]
    np.testing.assert_array_equal(ours, theirs.permute(1, 2, 0).numpy())
