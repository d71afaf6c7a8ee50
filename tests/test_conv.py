"""The bfloat16 small-map convolution path (openic.models.conv) against F.conv2d, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import openic.models.conv as conv_module
from openic.models import create_model
from openic.models.conv import Conv2d, im2col_conv2d


@pytest.fixture(autouse=True)
def native_bf16(monkeypatch):
    """The GEMM path is taken only where bfloat16 is native; the tests check its choices on any CPU."""
    monkeypatch.setattr(conv_module, "_NATIVE_BF16", True)
    monkeypatch.setattr(conv_module, "GEMM_MIN_CHANNELS", 8)  # small layers keep the tests fast


def test_narrow_layers_on_small_maps_keep_the_convolution(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(conv_module, "_NATIVE_BF16", True)
    x = torch.randn(2, 128, 4, 4).bfloat16()
    assert not Conv2d(128, 128, 3, padding=1, bias=False).bfloat16().uses_gemm(x)
    assert Conv2d(256, 128, 3, padding=1, bias=False).bfloat16().uses_gemm(torch.randn(2, 256, 4, 4).bfloat16())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("side", [3, 4, 7])
def test_im2col_conv2d_equals_conv2d_in_float64(stride, side):
    torch.manual_seed(side * 10 + stride)
    x = torch.randn(3, 5, side, side + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(F.conv2d(x, w, stride=stride, padding=1))
    ours = im2col_conv2d(x, w, stride, 1)
    ref = F.conv2d(x, w, stride=stride, padding=1)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    ours_grads = torch.autograd.grad(ours, [x, w], g)
    ref_grads = torch.autograd.grad(ref, [x, w], g)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def _conv(stride: int = 1, kernel: int = 3) -> Conv2d:
    return Conv2d(8, 16, kernel, stride=stride, padding=kernel // 2, bias=False)


def test_the_gemm_path_is_taken_only_for_bf16_3x3_on_small_maps():
    conv = _conv()
    small, large = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 5, 5)
    assert not conv.uses_gemm(small)  # float32
    bf16_conv = _conv().to(torch.bfloat16)
    assert bf16_conv.uses_gemm(small.bfloat16())
    assert not bf16_conv.uses_gemm(large.bfloat16())  # 25 output pixels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.uses_gemm(small)
        assert not conv.uses_gemm(large)
        assert _conv(stride=2).uses_gemm(torch.randn(2, 8, 8, 8))  # 4x4 out
        assert not _conv(kernel=1).uses_gemm(small)
        assert not Conv2d(8, 16, 3, padding=1, bias=True).uses_gemm(small)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not conv.uses_gemm(small)


def test_the_gemm_path_keeps_conv2d_s_dtype_rules(monkeypatch):
    conv, small = _conv(), torch.randn(2, 8, 4, 4)
    assert not conv.uses_gemm(small.bfloat16())  # bf16 input, float32 weights: F.conv2d's error, not ours to hide
    with pytest.raises(RuntimeError):
        conv(small.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv.uses_gemm(small.double())  # autocast leaves float64 alone
    assert conv.to(torch.bfloat16).uses_gemm(small.bfloat16())
    monkeypatch.setattr(conv_module, "_NATIVE_BF16", False)
    assert not conv.uses_gemm(small.bfloat16())  # emulated bfloat16: not measured, the default kernel


@pytest.mark.parametrize("stride,side", [(1, 4), (2, 7), (2, 8)])
def test_bf16_forward_and_gradients_match_the_convolution(stride, side):
    torch.manual_seed(stride + side)
    conv = _conv(stride)
    ref = torch.nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=False)
    ref.weight = conv.weight
    x = torch.randn(4, 8, side, side).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for module in (conv, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x)
        assert y.dtype == torch.bfloat16
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.float())
        grads.append(module.weight.grad.clone())
        module.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.uses_gemm(x)
    torch.testing.assert_close(outs[0], outs[1], atol=0.05, rtol=0.02)  # both round the product to bfloat16
    torch.testing.assert_close(grads[0], grads[1], atol=0.05, rtol=0.02)
    assert grads[0].dtype == torch.float32  # the float32 master weight gets a float32 gradient


def test_resnet_stage4_at_28px_takes_the_gemm_path_and_keeps_its_state_dict():
    model = create_model(18, 10, (3, 28, 28))
    taken: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, Conv2d):
            module.register_forward_pre_hook(lambda m, args, n=name: taken.append(n) if m.uses_gemm(args[0]) else None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(2, 3, 28, 28) * 255)
    assert taken == ["stage4.unit1.conv1", "stage4.unit1.conv2", "stage4.unit2.conv1", "stage4.unit2.conv2"]
    assert "stage4.unit1.conv2.weight" in model.state_dict()


def test_float32_small_maps_run_in_the_plain_layout_on_avx512_and_match(monkeypatch):
    monkeypatch.setattr(conv_module, "_AVX512", True)
    torch.manual_seed(3)
    conv = _conv()
    x = torch.randn(32, 8, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert conv.uses_plain_layout(x) and not conv.uses_gemm(x)
    assert not conv.uses_plain_layout(x[:31])  # below the batch where it pays
    assert not conv.uses_plain_layout(x.detach().contiguous())  # already plain: nothing to change
    y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the next layers keep their layout
    ref = F.conv2d(x, conv.weight, padding=1)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y, [x, conv.weight], g), torch.autograd.grad(ref, [x, conv.weight], g),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)  # another kernel sums in another order
    monkeypatch.setattr(conv_module, "_AVX512", False)
    assert not conv.uses_plain_layout(x)


def test_bn_data_on_channels_last_input_matches_and_keeps_the_layout():
    from openic.models.resnet import FixedGammaBatchNorm2d

    torch.manual_seed(5)
    plain_bn, cl_bn = FixedGammaBatchNorm2d(3), FixedGammaBatchNorm2d(3)
    with torch.no_grad():
        plain_bn.bias.normal_()
        cl_bn.bias.copy_(plain_bn.bias)
    x = torch.rand(8, 3, 6, 6) * 255
    y_plain = plain_bn(x)
    y_cl = cl_bn(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y_plain)
    torch.testing.assert_close(cl_bn.running_mean, plain_bn.running_mean)
    torch.testing.assert_close(cl_bn.running_var, plain_bn.running_var)
    (y_plain * y_plain).sum().backward()
    (y_cl * y_cl).sum().backward()
    torch.testing.assert_close(cl_bn.bias.grad, plain_bn.bias.grad)


def test_7x7_maps_take_the_gemm_path_only_from_512_input_channels():
    def conv(c_in: int, stride: int = 1) -> Conv2d:
        return Conv2d(c_in, 16, 3, stride=stride, padding=1, bias=False).to(torch.bfloat16)

    x7 = torch.randn(2, 512, 7, 7).bfloat16()
    assert conv(512).uses_gemm(x7)
    assert conv(512, stride=2).uses_gemm(torch.randn(2, 512, 14, 14).bfloat16())
    assert not conv(256).uses_gemm(x7[:, :256])
    assert not conv(512).uses_gemm(torch.randn(2, 512, 8, 8).bfloat16())
