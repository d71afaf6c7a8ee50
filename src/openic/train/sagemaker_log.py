"""SageMaker's training log lines (spec §5), so metric regexes written for SageMaker's CloudWatch logs work.

The start-up block (three configuration dicts, then "---- Parameters ----") is printed here; the per-batch
Speedometer and per-epoch lines are printed by ``train.loop`` where the numbers are made.
"""

from __future__ import annotations

import logging

from openic.hyperparams import HyperParameters

log = logging.getLogger("openic.train.loop")  # one logger name for every training line, as before


def log_configuration(hp: HyperParameters) -> None:
    """The start-up block SageMaker's container prints: the three configuration dicts, then the parameters."""
    defaults = {spec.name: spec.default for spec in HyperParameters.specs() if not spec.required}
    log.info("Default configuration: %s", defaults)
    log.info("Provided configuration (values that differ from the defaults): %s", hp.changed())
    log.info("Final configuration: %s", hp.to_dict())
    log.info("use_pretrained_model: %d", hp.use_pretrained_model)
    log.info("multi_label: %d", hp.multi_label)
    if hp.multi_label and hp.top_k:
        log.warning("top_k=%d is not reported with multi_label=1 (top-k accuracy needs a single label)", hp.top_k)
    for line in parameter_block(hp):
        log.info("%s", line)


def parameter_block(hp: HyperParameters) -> list[str]:
    """SageMaker's "---- Parameters ----" start-up block (spec §5), one string per line."""
    c, h, w = hp.image_shape
    checkpoint = (f"checkpoint_frequency: {hp.checkpoint_frequency}" if hp.checkpoint_frequency
                  else "checkpoint_frequency not set, will store the best model")
    return ["---- Parameters ----", f"num_layers: {hp.num_layers}",
            f"data type: <type 'numpy.{hp.precision_dtype}'>", f"epochs: {hp.epochs}",
            f"image resize size: {hp.resize}", f"optimizer: {hp.optimizer}", f"momentum: {hp.momentum}",
            f"weight_decay: {hp.weight_decay}", f"learning_rate: {hp.learning_rate}",
            f"num_training_samples: {hp.num_training_samples}", f"mini_batch_size: {hp.mini_batch_size}",
            f"image_shape: {c},{h},{w}", f"num_classes: {hp.num_classes}",
            f"augmentation_type: {hp.augmentation_type}", f"kv_store: {hp.kv_store or 'device'}",
            f"top_k: {hp.top_k}", checkpoint, "--------------------"]


def log_epoch_train(epoch: int, train: dict[str, float], elapsed: float) -> None:
    """``Epoch[k] Train-accuracy=...`` (and top-k) then ``Epoch[k] Time cost=...``, as MXNet's fit loop prints."""
    for name, value in train.items():
        if name != "loss":
            log.info("Epoch[%d] Train-%s=%f", epoch, name, value)
    log.info("Epoch[%d] Time cost=%.3f", epoch, elapsed)
