"""``sagemaker.deserializers``."""

from openic.sdk.serde import BytesDeserializer, JSONDeserializer, JSONLinesDeserializer, StringDeserializer

__all__ = ["BytesDeserializer", "JSONDeserializer", "JSONLinesDeserializer", "StringDeserializer"]
