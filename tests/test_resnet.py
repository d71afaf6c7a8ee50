from __future__ import annotations

import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import FIXTURES

from openic.errors import ClientError
from openic.models import DEPTHS, create_model, mxnet_name_map, mxnet_param_name
from openic.models.resnet import Bottleneck, min_image_side

MODELS = FIXTURES / "mxnet_models"
BIG = (3, 224, 224)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def formula_count(num_layers: int, num_classes: int, image_shape) -> int:
    """Weight count from the architecture description alone (fixtures README), not from the model code."""
    c, h, _ = image_shape
    imagenet = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
    imagenet[200] = [3, 24, 36, 3]
    units = imagenet.get(num_layers) or [(num_layers - 2) // 6] * 3
    bottleneck = num_layers in imagenet and num_layers >= 50
    widths = [256, 512, 1024, 2048] if bottleneck else [64, 128, 256, 512] if len(units) == 4 else [16, 32, 64]
    stem = 64 if len(units) == 4 else 16
    bn = 2  # gamma + beta per channel
    total = bn * c + stem * c * (9 if h <= 32 else 49) + (0 if h <= 32 else bn * stem)
    c_in = stem
    for n, w in zip(units, widths, strict=True):
        for u in range(n):
            total += bn * c_in
            if bottleneck:
                m = w // 4
                total += c_in * m + bn * m + m * m * 9 + bn * m + m * w
            else:
                total += c_in * w * 9 + bn * w + w * w * 9
            total += c_in * w if u == 0 else 0
            c_in = w
    return total + bn * c_in + c_in * num_classes + num_classes


def test_formula_matches_readme_counts():
    # The four MXNet checkpoints described in the fixtures README (sums over their arg: entries).
    assert formula_count(18, 10, (3, 32, 32)) == 11_176_272
    assert formula_count(20, 10, (3, 28, 28)) == 272_544
    assert formula_count(50, 7, (3, 64, 64)) == 23_514_829
    assert formula_count(18, 4, (1, 32, 32)) == 11_172_038


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_depth_count_and_forward(depth):
    torch.manual_seed(0)
    model = create_model(depth, 1000, BIG).eval()
    assert n_params(model) == formula_count(depth, 1000, BIG)
    assert model.bn0 is not None and model.conv0.kernel_size == (7, 7)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 40, 40) * 255)  # tiny input through the 7x7 stem: 40→20→10→…
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [18, 20, 50, 110])
def test_small_stem_forward_and_count(depth):
    model = create_model(depth, 10, (3, 32, 32)).eval()
    assert model.bn0 is None and model.conv0.kernel_size == (3, 3) and model.conv0.stride == (1, 1)
    assert n_params(model) == formula_count(depth, 10, (3, 32, 32))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32) * 255)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_stem_choice_by_height():
    assert create_model(18, 10, (3, 32, 32)).bn0 is None
    assert create_model(18, 10, (3, 33, 33)).bn0 is not None
    assert create_model(18, 10, (3, 64, 64)).conv0.stride == (2, 2)
    # The depth, not the height, picks the layout: 18 at 28x28 is 4-stage (MXNet would refuse it).
    m = create_model(18, 10, (3, 28, 28))
    assert m.stage_names == ("stage1", "stage2", "stage3", "stage4") and m.fc1.in_features == 512


def test_one_channel_input():
    model = create_model(20, 4, (1, 28, 28)).eval()
    assert model.conv0.in_channels == 1 and model.bn_data.num_features == 1
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28) * 255)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert n_params(model) == formula_count(20, 4, (1, 28, 28))


def test_unit_structure():
    m = create_model(50, 5, (3, 64, 64))
    assert all(isinstance(getattr(m, s).unit1, Bottleneck) for s in m.stage_names)
    for s in m.stage_names:
        stage = getattr(m, s)
        assert stage.unit1.sc is not None  # every stage, stage 1 included
        assert all(u.sc is None for u in list(stage)[1:])
    assert m.stage1.unit1.sc.stride == (1, 1) and m.stage2.unit1.conv2.stride == (2, 2)
    assert m.stage2.unit1.conv1.stride == (1, 1)  # bottleneck: the stride sits on the 3x3
    assert all(c.bias is None for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(b.eps == 2e-5 and b.momentum == 0.1 for b in bns)


@pytest.mark.parametrize("depth", [0, 19, 269, -1])
def test_unknown_depth(depth):
    with pytest.raises(ClientError, match=r"supported depths: 18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200"):
        create_model(depth, 10, (3, 32, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_layers=18, num_classes=10, image_shape=(3, 7, 32)), "at least 8"),
        (dict(num_layers=18, num_classes=10, image_shape=(3, 32, 7)), "at least 8"),
        (dict(num_layers=20, num_classes=10, image_shape=(3, 3, 3)), "at least 4"),
        (dict(num_layers=50, num_classes=10, image_shape=(3, 64, 31)), "at least 32"),
        (dict(num_layers=18, num_classes=10, image_shape=(2, 32, 32)), "C 1 or 3"),
        (dict(num_layers=18, num_classes=10, image_shape=(3, 32)), r"image_shape \(3, 32\) is not valid"),
        (dict(num_layers=18, num_classes=10, image_shape=(3, 0, 32)), "H and W from 1 to 4096"),
        (dict(num_layers=18, num_classes=0, image_shape=(3, 32, 32)), "num_classes"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ClientError, match=match):
        create_model(**kwargs)


def test_min_image_side_is_accepted():
    assert min_image_side(18, 8) == 8 and min_image_side(20, 4) == 4 and min_image_side(18, 64) == 32
    model = create_model(18, 3, (3, 8, 8)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8) * 255).shape == (1, 3)


def test_bn_data_gamma_fixed():
    torch.manual_seed(0)
    model = create_model(20, 10, (3, 28, 28))
    assert not model.bn_data.weight.requires_grad and model.bn_data.bias.requires_grad
    x = torch.rand(4, 3, 28, 28) * 255
    model.train()
    model(x).logsumexp(1).sum().backward()
    assert model.bn_data.weight.grad is None and model.bn_data.bias.grad is not None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    opt.step()
    assert torch.equal(model.bn_data.weight, torch.ones(3))
    # The stored gamma is never applied (MXNet fix_gamma): a wrong value does not change the output.
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.bn_data.weight.fill_(0.05)
        assert torch.equal(model(x), before)


def test_bn_data_training_stats():
    model = create_model(20, 10, (3, 28, 28)).train()
    x = torch.rand(8, 3, 28, 28) * 255
    model(x)
    # PyTorch momentum 0.1 == MXNet momentum 0.9: moving = 0.9 * moving + 0.1 * batch_mean
    expected = 0.1 * x.mean((0, 2, 3))
    torch.testing.assert_close(model.bn_data.running_mean, expected)
    assert model.bn_data.num_batches_tracked.item() == 1


def test_eval_determinism_and_batch_independence():
    model = create_model(18, 10, (3, 32, 32)).eval()
    x = torch.rand(3, 3, 32, 32) * 255
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[1:2], rtol=1e-4, atol=1e-4)


def test_init_matches_mxnet_xavier():
    torch.manual_seed(0)
    model = create_model(18, 1000, (3, 32, 32))
    w = model.stage4.unit2.conv2.weight  # 512x512x3x3
    assert abs(w.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.01
    assert abs(w.mean().item()) < 1e-3
    assert abs(model.fc1.weight.std().item() / math.sqrt(2 / 512) - 1) < 0.01
    assert torch.equal(model.fc1.bias, torch.zeros(1000))
    for b in (model.bn1, model.stage2.unit1.bn2, model.bn_data):
        assert torch.equal(b.weight, torch.ones_like(b.weight)) and torch.equal(b.bias, torch.zeros_like(b.bias))


def test_reset_classifier():
    torch.manual_seed(0)
    model = create_model(20, 10, (3, 28, 28))
    old_fc, old_conv = model.fc1.weight.clone(), model.conv0.weight.clone()
    model.reset_classifier()
    assert model.fc1.out_features == 10 and not torch.equal(model.fc1.weight, old_fc)
    assert torch.equal(model.conv0.weight, old_conv)
    model.reset_classifier(5)
    assert model.fc1.weight.shape == (5, 64) and torch.equal(model.fc1.bias, torch.zeros(5))
    with pytest.raises(ClientError, match="num_classes"):
        model.reset_classifier(0)


def test_channels_last_and_autocast():
    torch.manual_seed(0)
    model = create_model(18, 10, (3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


@pytest.mark.parametrize(
    "torch_name, mx_name",
    [
        ("bn_data.weight", "bn_data_gamma"),
        ("bn_data.bias", "bn_data_beta"),
        ("bn_data.running_mean", "bn_data_moving_mean"),
        ("conv0.weight", "conv0_weight"),
        ("bn0.running_var", "bn0_moving_var"),
        ("stage3.unit12.bn1.weight", "stage3_unit12_bn1_gamma"),
        ("stage1.unit1.conv1.weight", "stage1_unit1_conv1_weight"),
        ("stage1.unit1.sc.weight", "stage1_unit1_sc_weight"),
        ("bn1.bias", "bn1_beta"),
        ("fc1.weight", "fc1_weight"),
        ("fc1.bias", "fc1_bias"),
    ],
)
def test_mxnet_param_name(torch_name, mx_name):
    assert mxnet_param_name(torch_name) == mx_name


@pytest.mark.parametrize("bad", ["bn1.num_batches_tracked", "weight", "fc1.running_mean", "conv0.scale"])
def test_mxnet_param_name_rejects(bad):
    with pytest.raises(ValueError):
        mxnet_param_name(bad)


def read_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """Dense V2 `.params` reader (PARAMS_FORMAT.md, "Minimal reader") over the model.tar.gz member."""
    with tarfile.open(folder / "model.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".params"))
        b = tar.extractfile(member).read()
    o = 0

    def take(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, b, o)
        o += struct.calcsize(fmt)
        return v

    assert take("<QQ") == (0x112, 0)
    arrays = []
    for _ in range(take("<Q")[0]):
        assert take("<Ii") == (0xF993FAC9, 0)
        (ndim,) = take("<i")
        shape = take(f"<{ndim}q")
        assert take("<iii")[2] == 0  # float32
        a = np.frombuffer(b, "<f4", math.prod(shape), o).reshape(shape)
        o += a.nbytes
        arrays.append(a)
    names = []
    for _ in range(take("<Q")[0]):
        (n,) = take("<Q")
        names.append(b[o : o + n].decode())
        o += n
    return dict(zip(names, arrays, strict=True))


CHECKPOINTS = [("resnet18_3x32x32_c10", 18, 10, (3, 32, 32)), ("resnet20_3x28x28_c10", 20, 10, (3, 28, 28))]
CHECKPOINTS = [c for c in CHECKPOINTS if (MODELS / c[0] / "model.tar.gz").is_file()]  # the subset: ResNet-20 only


@pytest.mark.parametrize("folder, depth, classes, shape", CHECKPOINTS)
def test_mxnet_checkpoint_names_shapes_and_logits(folder, depth, classes, shape):
    params = read_checkpoint(MODELS / folder)
    mx = {k.split(":", 1)[1]: v for k, v in params.items()}
    args = sum(v.size for k, v in params.items() if k.startswith("arg:"))
    model = create_model(depth, classes, shape)
    names = mxnet_name_map(model)
    state = model.state_dict()
    assert set(names) == set(mx)
    assert {m: tuple(state[t].shape) for m, t in names.items()} == {m: v.shape for m, v in mx.items()}
    assert n_params(model) == args == formula_count(depth, classes, shape)
    # Loading the MXNet arrays verbatim (stored bn_data_gamma 0.99998 included) reproduces MXNet's logits.
    model.load_state_dict({t: torch.from_numpy(mx[m].copy()) for m, t in names.items()}, strict=False)
    x = torch.from_numpy(np.load(MODELS / folder / "inputs.npy")).float()
    want = torch.from_numpy(np.load(MODELS / folder / "logits.npy"))
    with torch.no_grad():
        got = model.eval()(x)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())
    assert torch.equal(got.argmax(1), want.argmax(1))
