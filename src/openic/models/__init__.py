"""The network family: SageMaker's (MXNet's) pre-activation ResNet.

``models.depths`` is torch-free (the schema imports it); the torch names below load lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ResNet": "openic.models.resnet", "create_model": "openic.models.resnet",
            "mxnet_name_map": "openic.models.resnet", "mxnet_param_name": "openic.models.resnet",
            "DEPTHS": "openic.models.depths", "min_image_side": "openic.models.depths"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openic.models' has no attribute {name!r}")
