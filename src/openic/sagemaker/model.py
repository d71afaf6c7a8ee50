"""``sagemaker.model.Model``: deploy an existing ``model.tar.gz``, including SageMaker's own MXNet-trained ones."""

from openic.sdk.model import Model

__all__ = ["Model"]
