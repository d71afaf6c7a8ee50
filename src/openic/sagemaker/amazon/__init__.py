"""``sagemaker.amazon``."""

from openic.sagemaker.amazon import amazon_estimator

__all__ = ["amazon_estimator"]
