"""Optimizers and the learning-rate schedule, as SageMaker's MXNet trainer sets them up.

- ``sgd`` / ``nag``: momentum SGD (Nesterov for nag) with ``weight_decay``. MXNet decays only ``*_weight`` and
  ``*_gamma`` arrays, so biases and BatchNorm betas get none here either.
- ``adam`` (``beta_1``, ``beta_2``, ``eps``) and ``rmsprop`` (``gamma`` = decay of the squared-gradient average,
  ``eps``): SageMaker's documentation says weight_decay is ignored for these, so it is not applied.
- The frozen ``bn_data`` gamma (``requires_grad=False``) is never handed to the optimizer.
- Schedule: MXNet's ``MultiFactorScheduler``: the rate is multiplied by ``lr_scheduler_factor`` once the update
  count passes ``epoch * steps_per_epoch`` for each epoch in ``lr_scheduler_step``. ``steps_per_epoch`` comes from
  ``num_training_samples`` (per host), as in MXNet's ``fit.py``.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from openic.hyperparams import HyperParameters

log = logging.getLogger(__name__)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # biases and BatchNorm betas are PyTorch's `bias`; MXNet decays only weights and gammas
        (no_decay if name.endswith("bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(hp: HyperParameters, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``hp.optimizer`` with SageMaker's hyperparameters."""
    lr = hp.learning_rate
    if hp.optimizer in ("sgd", "nag"):
        groups = _param_groups(model, hp.weight_decay)
        nesterov = hp.optimizer == "nag" and hp.momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, nesterov=nesterov)
    groups = _param_groups(model, 0.0)
    if hp.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(hp.beta_1, hp.beta_2), eps=hp.eps)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=hp.gamma, eps=hp.eps)
    raise AssertionError(f"optimizer {hp.optimizer!r} passed validation but has no implementation")


def steps_per_epoch(hp: HyperParameters, hosts: int = 1) -> int:
    """Updates per epoch for the schedule, from ``num_training_samples`` as MXNet's fit.py computes it: with
    several hosts each update consumes ``mini_batch_size`` images per host, so the epoch has fewer of them."""
    return max(1, math.ceil(hp.num_training_samples / (hp.mini_batch_size * hosts)))


def warn_if_epoch_length_differs(hp: HyperParameters, batches: int, hosts: int = 1) -> None:
    """The schedule's epoch comes from ``num_training_samples``; say so when the data gives another length."""
    expected = steps_per_epoch(hp, hosts)
    if expected != batches:
        log.warning("num_training_samples=%d gives %d steps per epoch for the learning-rate schedule, but the train "
                    "channel gives %d batches per epoch", hp.num_training_samples, expected, batches)


def learning_rate_at(hp: HyperParameters, num_update: int, epoch_steps: int) -> float:
    """The rate for update number ``num_update`` (0-based count of updates already done)."""
    passed = sum(1 for e in hp.lr_scheduler_step if num_update >= e * epoch_steps)
    return hp.learning_rate * hp.lr_scheduler_factor**passed


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
