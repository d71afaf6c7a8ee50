"""MXNet-compatible augmentation on uint8 batches (openic.data.transforms)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from _shared import FIXTURES
from PIL import Image

from openic.data.transforms import (
    AUGMENTATION_TYPES,
    FILL_VALUE,
    Augmenter,
    affine_matrices,
    center_crop,
    hls_jitter,
    hls_to_rgb,
    inference_transform,
    resize_shorter,
    resize_to,
    rgb_to_hls,
    shorter_side_size,
    to_float_input,
    warp_crop,
)
from openic.errors import ClientError
from openic.formats.recordio import RecordReader, unpack

ALL_TYPES = [None, *AUGMENTATION_TYPES]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_u8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen(seed))


def position_image(n: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index: a crop's top-left pixel tells its offset."""
    x = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    x[:, 0] = torch.arange(h, dtype=torch.uint8)[:, None]
    x[:, 1] = torch.arange(w, dtype=torch.uint8)[None, :]
    return x


def pixels(rows: list[list[int]]) -> torch.Tensor:
    """A list of 3-channel pixels as a uint8 batch [1, 3, 1, P]."""
    return torch.tensor(rows, dtype=torch.uint8).T[None, :, None, :].contiguous()


# ---- MXNet ImageRecordIter golden arrays (centre crop, no augmentation) ----------------------------------------


def first_val_images(n: int) -> torch.Tensor:
    rec = FIXTURES / "rec" / "digits_val.rec"
    if not rec.exists():
        pytest.skip(f"fixtures not found: {rec}")
    images = []
    for record, _span in RecordReader(rec).scan():
        _header, payload = unpack(record)
        images.append(np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")))
        if len(images) == n:
            break
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize(("side", "fixture"), [(28, "iter_digits_val_center28_first8_nchw.npy"),
                                               (32, "iter_digits_val_32_first8_nchw.npy")])
def test_eval_matches_mxnet_image_record_iter(side, fixture):
    images = first_val_images(8)
    expected = torch.from_numpy(np.load(FIXTURES / "arrays" / fixture))
    aug = Augmenter(None, (3, side, side))
    assert torch.equal(aug.eval_batch(images), expected)
    assert torch.equal(aug.train_batch(images, gen()), expected)  # no augmentation_type: centre crop in training too


def test_center_crop_offsets_on_odd_sizes():
    x = rand_u8(2, 3, 35, 30)
    out = Augmenter(None, (3, 28, 27)).eval_batch(x)
    assert torch.equal(out, x[:, :, 3:31, 1:28])  # ((35-28)//2, (30-27)//2)
    assert torch.equal(center_crop(x, 28, 27), out)


# ---- random crop and mirror ----------------------------------------------------------------------------------


def test_random_crop_in_bounds_and_covers_every_offset():
    x = position_image(3000, 20, 24)
    out = Augmenter("crop", (3, 16, 16)).train_geometry(x, gen(1))
    assert out.shape == (3000, 3, 16, 16)
    ys, xs = out[:, 0, 0, 0].long(), out[:, 1, 0, 0].long()
    assert torch.equal(out[:, 0].long(), ys[:, None, None] + torch.arange(16)[None, :, None].expand(3000, 16, 16))
    assert torch.equal(out[:, 1].long(), xs[:, None, None] + torch.arange(16)[None, None, :].expand(3000, 16, 16))
    assert set(zip(ys.tolist(), xs.tolist(), strict=True)) == {(y, x) for y in range(5) for x in range(9)}


def test_mirror_probability_about_half():
    x = position_image(4000, 4, 6)
    out = Augmenter("crop", (3, 4, 6)).train_photometric(x, gen(2))
    flipped = torch.equal
    is_flip = torch.tensor([flipped(o, x[0].flip(-1)) for o in out])
    is_same = torch.tensor([flipped(o, x[0]) for o in out])
    assert bool((is_flip ^ is_same).all())
    assert 0.45 < is_flip.float().mean().item() < 0.55
    assert torch.equal(x, position_image(4000, 4, 6))  # the input batch is not modified


def test_no_augmentation_type_never_mirrors_or_moves():
    x = rand_u8(64, 3, 10, 12)
    assert torch.equal(Augmenter(None, (3, 8, 8)).train_batch(x, gen()), x[:, :, 1:9, 2:10])


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_same_seed_same_output(kind):
    x = rand_u8(16, 3, 36, 40)
    aug = Augmenter(kind, (3, 28, 28), resize=32)
    a, b = aug.train_batch(x, gen(7)), aug.train_batch(x, gen(7))
    assert a.dtype == torch.uint8 and a.shape == (16, 3, 28, 28)
    assert torch.equal(a, b)
    if kind is not None:
        assert not torch.equal(a, aug.train_batch(x, gen(8)))


# ---- HLS jitter ----------------------------------------------------------------------------------------------

# Reference values from OpenCV's cvtColor (COLOR_RGB2HLS / COLOR_HLS2RGB) on 8-bit images.
RGB = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 128], [200, 100, 50],
       [10, 200, 180], [255, 128, 0], [90, 30, 160], [1, 2, 3], [250, 251, 240]]
RGB_AS_HLS = [[0, 128, 255], [60, 128, 255], [120, 128, 255], [0, 255, 0], [0, 0, 0], [0, 128, 0], [10, 125, 153],
              [87, 105, 231], [15, 128, 255], [134, 95, 174], [105, 2, 128], [33, 246, 148]]
HLS = [[0, 128, 255], [60, 128, 255], [120, 128, 255], [180, 128, 255], [30, 64, 200], [90, 200, 100],
       [150, 20, 250], [179, 255, 255], [45, 0, 77], [100, 100, 0]]
HLS_AS_RGB = [[255, 1, 1], [1, 255, 1], [1, 1, 255], [255, 1, 1], [114, 114, 14], [178, 222, 222], [40, 0, 40],
              [255, 255, 255], [0, 0, 0], [100, 100, 100]]


def test_hls_conversions_match_opencv():
    assert torch.equal(rgb_to_hls(pixels(RGB)), pixels(RGB_AS_HLS))
    assert torch.equal(hls_to_rgb(pixels(HLS)), pixels(HLS_AS_RGB))


def test_zero_offsets_are_near_identity():
    x = rand_u8(8, 3, 16, 16)
    out = hls_jitter(x, torch.zeros(8, 3))
    assert (out.int() - x.int()).abs().max() <= 5  # the uint8 HLS round trip is lossy, in MXNet too
    assert (out.int() - x.int()).abs().float().mean() < 1.0


def test_hue_clips_at_0_and_180_like_mxnet():
    # H=170 + 36 clips to 180, which OpenCV reads as hue 0; H=10 - 36 clips to 0 (no wrap to 154).
    hls = pixels([[170, 128, 255], [10, 128, 255]])
    rgb = hls_to_rgb(hls)
    up = hls_jitter(rgb[:, :, :, :1], torch.tensor([[36.0, 0.0, 0.0]]))
    down = hls_jitter(rgb[:, :, :, 1:], torch.tensor([[-36.0, 0.0, 0.0]]))
    assert torch.equal(up, hls_to_rgb(pixels([[180, 128, 255]])))
    assert torch.equal(down, hls_to_rgb(pixels([[0, 128, 255]])))
    assert torch.equal(up, down)  # both ended at pure red
    assert not torch.equal(down, hls_to_rgb(pixels([[154, 128, 255]])))


def test_lightness_and_saturation_offsets_clip():
    grey = torch.full((1, 3, 2, 2), 100, dtype=torch.uint8)
    assert torch.equal(hls_jitter(grey, torch.tensor([[0.0, 0.0, 50.0]])), torch.full_like(grey, 150))
    assert torch.equal(hls_jitter(grey, torch.tensor([[0.0, 0.0, -200.0]])), torch.zeros_like(grey))
    red = hls_to_rgb(pixels([[0, 128, 200]]))
    desat = hls_jitter(red, torch.tensor([[0.0, -255.0, 0.0]]))
    assert torch.equal(desat, torch.full_like(desat, 128))


def test_hls_offsets_drawn_within_mxnet_ranges():
    aug = Augmenter("crop_color", (3, 4, 4))
    off = aug.draw_hls_offsets(20000, gen(3))
    assert off.shape == (20000, 3)
    assert torch.equal(off, off.trunc())
    for k, limit in enumerate((36, 50, 50)):  # H, S, L; int() truncates toward zero: +-limit is (almost) never hit
        assert off[:, k].abs().max() <= limit
        assert off[:, k].min() <= -(limit - 1) and off[:, k].max() >= limit - 1
        assert abs(off[:, k].mean().item()) < 1.0
    assert Augmenter("crop", (3, 4, 4)).draw_hls_offsets(5, gen()) is None


def test_grey_single_channel_gets_lightness_only():
    grey = rand_u8(4, 1, 6, 6)
    off = torch.tensor([[30.0, -20.0, 40.0], [-30.0, 0.0, -60.0], [5.0, -50.0, 0.0], [0.0, -1.0, 255.0]])
    out = hls_jitter(grey, off)
    assert torch.equal(out, (grey.int() + off[:, 2, None, None, None].int()).clamp(0, 255).to(torch.uint8))
    # ... which is exactly MXNet's HLS step on the same grey image stored as RGB when the S offset is <= 0
    assert torch.equal(hls_jitter(grey.expand(4, 3, 6, 6).contiguous(), off), out.expand(4, 3, 6, 6))


# ---- affine warp (crop_color_transform) --------------------------------------------------------------------


def test_zero_affine_is_identity():
    x = rand_u8(3, 3, 32, 40)
    m = affine_matrices(torch.zeros(3), torch.zeros(3), torch.ones(3), 32, 40)
    ys, xs = torch.tensor([0, 2, 4]), torch.tensor([0, 5, 12])
    out = warp_crop(x, m, ys, xs, 28, 28)
    for i in range(3):
        assert torch.equal(out[i], x[i, :, ys[i] : ys[i] + 28, xs[i] : xs[i] + 28])


def test_rotation_turns_about_mxnet_centre_and_fills_border():
    # MXNet rotates about (w/2, h/2): 180 degrees sends pixel x to w - x, so row/column 0 come from outside.
    x = rand_u8(1, 3, 8, 10)
    m = affine_matrices(torch.tensor([180.0]), torch.zeros(1), torch.ones(1), 8, 10)
    out = warp_crop(x, m, torch.tensor([0]), torch.tensor([0]), 8, 10, fill_value=FILL_VALUE)
    assert torch.equal(out[:, :, 1:, 1:], x.flip(-1).flip(-2)[:, :, :-1, :-1])
    assert bool((out[:, :, 0, :] == FILL_VALUE).all()) and bool((out[:, :, :, 0] == FILL_VALUE).all())


def test_shear_moves_along_x_only():
    rows = torch.arange(40, dtype=torch.uint8)[None, None, :, None].expand(1, 3, 40, 40).contiguous() * 5
    m = affine_matrices(torch.zeros(1), torch.tensor([0.1]), torch.ones(1), 40, 40)
    out = warp_crop(rows, m, torch.tensor([6]), torch.tensor([6]), 28, 28)
    assert torch.equal(out, rows[:, :, 6:34, 6:34])  # horizontal stripes are unchanged by an x-shear
    cols = rows.transpose(-1, -2).contiguous()
    assert not torch.equal(warp_crop(cols, m, torch.tensor([6]), torch.tensor([6]), 28, 28), cols[:, :, 6:34, 6:34])


def test_aspect_ratio_matrix_keeps_area():
    m = affine_matrices(torch.zeros(2), torch.zeros(2), torch.tensor([0.75, 1.25]), 32, 32)
    lin = m[:, :, :2]
    assert torch.allclose(lin[:, 0, 1], torch.zeros(2, dtype=lin.dtype)) and torch.allclose(lin[:, 1, 0], lin[:, 0, 1])
    assert torch.allclose(lin[:, 1, 1] / lin[:, 0, 0], torch.tensor([0.75, 1.25], dtype=lin.dtype))
    assert torch.allclose(lin[:, 0, 0] + lin[:, 1, 1], torch.full((2,), 2.0, dtype=lin.dtype))


def test_crop_color_transform_changes_pixels_and_keeps_shape():
    x = rand_u8(32, 3, 32, 32)
    aug = Augmenter("crop_color_transform", (3, 28, 28))
    out = aug.train_geometry(x, gen(4))
    assert out.shape == (32, 3, 28, 28)
    plain = Augmenter("crop", (3, 28, 28)).train_geometry(x, gen(4))
    assert not torch.equal(out, plain)
    angles = aug.draw_affine(5000, gen(5))
    assert angles[0].dtype == torch.int64 and set(angles[0].tolist()) == set(range(-10, 11))
    assert angles[1].abs().max() <= 0.1 and angles[1].abs().max() > 0.09
    assert (angles[2] - 1).abs().max() <= 0.25 and (angles[2] - 1).abs().max() > 0.24


# ---- resize, size checks, inference --------------------------------------------------------------------------


def test_resize_shorter_side_uses_mxnet_integer_sizes():
    assert shorter_side_size(20, 30, 24) == (24, 36)
    assert shorter_side_size(30, 20, 24) == (36, 24)
    assert shorter_side_size(25, 40, 32) == (32, 51)  # 40 * 32 // 25
    assert resize_shorter(rand_u8(2, 3, 25, 40), 32).shape == (2, 3, 32, 51)
    x = rand_u8(2, 3, 32, 51)
    assert resize_shorter(x, 32) is x  # already there: untouched, as in the in-memory cache


def test_resize_is_opencv_fixed_point_bilinear():
    x = rand_u8(2, 3, 8, 8)
    # exact 2x down: OpenCV's fixed-point bilinear gives (a + b + c + d + 2) >> 2
    quads = x.int().unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
    assert torch.equal(resize_to(x, 4, 4), ((quads + 2) >> 2).to(torch.uint8))
    flat = torch.full((1, 3, 5, 7), 77, dtype=torch.uint8)
    assert torch.equal(resize_to(flat, 13, 11), torch.full((1, 3, 13, 11), 77, dtype=torch.uint8))


def test_resize_then_crop():
    x = rand_u8(2, 3, 48, 64)
    out = Augmenter(None, (3, 28, 28), resize=32).eval_batch(x)
    assert torch.equal(out, center_crop(resize_to(x, 32, 42), 28, 28))


def test_too_small_image_is_a_client_error():
    with pytest.raises(ClientError, match=r"20x32.*3,28,28"):
        Augmenter("crop", (3, 28, 28)).train_batch(rand_u8(1, 3, 20, 32), gen())
    with pytest.raises(ClientError, match=r"24x36.*resize=24.*3,28,28"):
        Augmenter(None, (3, 28, 28), resize=24).eval_batch(rand_u8(1, 3, 40, 60))


def test_bad_arguments():
    with pytest.raises(ClientError, match="crop_color_transform"):
        Augmenter("flip", (3, 28, 28))
    with pytest.raises(ClientError, match="resize"):
        Augmenter(None, (3, 28, 28), resize=0)
    with pytest.raises(ClientError, match="channels"):
        Augmenter(None, (3, 28, 28)).eval_batch(rand_u8(1, 1, 28, 28))
    with pytest.raises(ValueError, match="uint8"):
        Augmenter(None, (3, 28, 28)).eval_batch(torch.zeros(1, 3, 28, 28))


def test_inference_transform_squashes_to_image_shape():
    one = inference_transform(rand_u8(3, 40, 30), (3, 28, 28))
    assert one.shape == (1, 3, 28, 28) and one.dtype == torch.uint8
    batch = rand_u8(2, 3, 17, 90)
    assert torch.equal(inference_transform(batch, (3, 32, 24)), resize_to(batch, 32, 24))
    with pytest.raises(ClientError, match="channels"):
        inference_transform(rand_u8(1, 3, 8, 8), (1, 8, 8))


@pytest.mark.parametrize("kind", ALL_TYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_single_image_and_grey(kind, channels):
    aug = Augmenter(kind, (channels, 28, 28), resize=30)
    x = rand_u8(1, channels, 33, 45)
    out = aug.train_batch(x, gen())
    assert out.shape == (1, channels, 28, 28) and out.dtype == torch.uint8
    assert aug.eval_batch(x).shape == (1, channels, 28, 28)
    assert aug.train_photometric(aug.train_geometry(x, gen(9)), gen(9)).shape == (1, channels, 28, 28)


def test_to_float_input():
    x = rand_u8(2, 3, 4, 4)
    y = to_float_input(x)
    assert y.dtype == torch.float32 and torch.equal(y, x.float())  # raw 0..255, no mean/std
    z = to_float_input(x, channels_last=True)
    assert z.is_contiguous(memory_format=torch.channels_last) and torch.equal(z, y)


def test_throughput_smoke():
    aug = Augmenter("crop_color_transform", (3, 28, 28))
    x = rand_u8(128, 3, 32, 32)
    g = gen()
    for _ in range(3):
        out = aug.train_batch(x, g)
    assert out.shape == (128, 3, 28, 28)
    assert not math.isnan(out.float().mean().item())
