"""``sagemaker.estimator``."""

from openic.sdk.estimator import Estimator

__all__ = ["Estimator"]
