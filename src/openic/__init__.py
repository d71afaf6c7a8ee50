"""openic: SageMaker's built-in Image Classification algorithm on PyTorch, run locally.

The names below are imported lazily, so ``import openic`` (and the RecordIO tools) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "HyperParameters": "openic.hyperparams",
    "ClientError": "openic.errors",
    "DataError": "openic.errors",
    "RecordReader": "openic.recordio",
    "RecordWriter": "openic.recordio",
    "IRHeader": "openic.recordio",
    "pack": "openic.recordio",
    "unpack": "openic.recordio",
    "decode_image": "openic.images",
    "make_list": "openic.im2rec",
    "pack_lst": "openic.im2rec",
    "make_digits": "openic.datasets",
    "make_cifar10": "openic.datasets",
    "create_model": "openic.models",
    "Channel": "openic.data.sources",
    "TrainConfig": "openic.train.setup",
    "fit": "openic.train.loop",
    "load_model": "openic.artifacts",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
