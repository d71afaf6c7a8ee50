"""The depth table (openic.models.depths) is the one place a depth is declared: schema, network and size rule follow."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

ADD_A_DEPTH = """
import openic.models.depths as depths
depths.DEPTHS[26] = depths.Layout("basic", (3, 3, 3, 3), 64, (64, 128, 256, 512))  # the one line
from openic.hyperparams import HyperParameters
from openic.models import create_model
import torch
hp = HyperParameters(num_layers="26", num_classes="3", num_training_samples="10", image_shape="3,16,16")
assert "26" in [s for s in HyperParameters.specs() if s.name == "num_layers"][0].choices
assert 26 in depths.imagenet_depths() and depths.min_image_side(26, 16) == 8
model = create_model(hp.num_layers, hp.num_classes, hp.image_shape)
units = sum(1 for name, _ in model.named_modules() if name.count(".") == 1 and ".unit" in name)
assert units == 12, units
assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
print("ok")
"""


def test_adding_a_depth_is_one_line_in_one_file():
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", ADD_A_DEPTH], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_depth_table_drives_the_schema_choices():
    from openic.hyperparams import HyperParameters
    from openic.models.depths import DEPTHS

    spec = next(s for s in HyperParameters.specs() if s.name == "num_layers")
    assert spec.choices == tuple(str(d) for d in DEPTHS)


def test_depth_table_module_is_torch_free():
    code = "import sys, openic.models.depths, openic.hyperparams; assert 'torch' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr
