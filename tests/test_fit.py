"""The training engine as a library (no CLI): MXNet's learning-rate schedule, BatchNorm re-estimation, and the
schema's minimum image size for the 7x7 stem."""

import pytest
import torch

from openic.hyperparams import HyperParameters
from openic.train.optim import learning_rate_at, steps_per_epoch


def test_lr_schedule_matches_mxnet_multifactor():
    hp = HyperParameters.from_strings({"num_classes": "10", "num_training_samples": "1000", "mini_batch_size": "100",
                                       "learning_rate": "0.1", "lr_scheduler_step": "2, 4",
                                       "lr_scheduler_factor": "0.5"})
    steps = steps_per_epoch(hp)
    assert steps == 10
    assert learning_rate_at(hp, 0, steps) == pytest.approx(0.1)
    assert learning_rate_at(hp, 19, steps) == pytest.approx(0.1)
    assert learning_rate_at(hp, 20, steps) == pytest.approx(0.05)
    assert learning_rate_at(hp, 40, steps) == pytest.approx(0.025)


def test_recalibrate_batchnorm_uses_current_weights_statistics():
    from openic.models import create_model
    from openic.train.loop import recalibrate_batchnorm

    model = create_model(20, 10, (3, 28, 28))
    x = torch.rand(16, 3, 28, 28) * 255
    recalibrate_batchnorm(model, [x], torch.autocast("cpu", enabled=False))
    # one batch, cumulative average: the input BatchNorm's running mean is exactly that batch's channel mean
    assert torch.allclose(model.bn_data.running_mean, x.mean((0, 2, 3)), rtol=1e-5)
    assert model.bn_data.momentum == pytest.approx(0.1)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
        model.train()
        train_out = model(x)
    assert torch.allclose(eval_out, train_out, atol=1e-2, rtol=1e-3)


def test_image_shape_too_small_for_the_7x7_stem_is_a_hyperparameter_error():
    from openic.errors import ClientError

    with pytest.raises(ClientError, match="image_shape"):
        HyperParameters.from_strings({"num_classes": "2", "num_training_samples": "10", "num_layers": "18",
                                      "image_shape": "3,64,16"})
