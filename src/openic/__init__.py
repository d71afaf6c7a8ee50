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
    "RecordReader": "openic.formats.recordio",
    "RecordWriter": "openic.formats.recordio",
    "IRHeader": "openic.formats.recordio",
    "pack": "openic.formats.recordio",
    "unpack": "openic.formats.recordio",
    "decode_image": "openic.formats.images",
    "make_list": "openic.prep.im2rec_list",
    "pack_lst": "openic.prep.im2rec",
    "make_digits": "openic.prep.samples",
    "make_cifar10": "openic.prep.samples",
    "create_model": "openic.models",
    "Channel": "openic.data.sources",
    "TrainConfig": "openic.train.config",
    "fit": "openic.train.loop",
    "load_model": "openic.artifacts.model",
    "Estimator": "openic.sdk",
    "TrainingInput": "openic.sdk",
    "Predictor": "openic.sdk",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
