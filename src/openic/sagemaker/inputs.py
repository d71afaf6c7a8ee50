"""``sagemaker.inputs``."""

from openic.sdk.inputs import TrainingInput

__all__ = ["TrainingInput"]
