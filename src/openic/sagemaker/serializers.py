"""``sagemaker.serializers``."""

from openic.sdk.serde import IdentitySerializer, NumpySerializer

__all__ = ["IdentitySerializer", "NumpySerializer"]
