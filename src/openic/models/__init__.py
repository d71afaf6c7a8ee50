"""The network family: SageMaker's (MXNet's) pre-activation ResNet."""

from __future__ import annotations

from openic.models.resnet import DEPTHS, ResNet, create_model, mxnet_name_map, mxnet_param_name

__all__ = ["DEPTHS", "ResNet", "create_model", "mxnet_name_map", "mxnet_param_name"]
