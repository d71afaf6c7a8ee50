"""The serializers and deserializers the workshop uses, shaped as in ``sagemaker.serializers``/``deserializers``."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np


class IdentitySerializer:
    """Send bytes as they are (an encoded image), with the given content type."""

    def __init__(self, content_type: str = "application/octet-stream") -> None:
        self.CONTENT_TYPE = content_type

    @property
    def content_type(self) -> str:
        return self.CONTENT_TYPE

    def serialize(self, data: Any) -> bytes:
        if hasattr(data, "read"):
            return data.read()
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        raise TypeError(f"IdentitySerializer sends bytes or a file object, got {type(data).__name__}")


class NumpySerializer:
    """A uint8 ``HxWxC``/``NxHxWxC`` array as ``application/x-npy``."""

    CONTENT_TYPE = "application/x-npy"

    def serialize(self, data: Any) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.asarray(data), allow_pickle=False)
        return buf.getvalue()


class BytesDeserializer:
    ACCEPT = ("*/*",)

    def deserialize(self, data: bytes, content_type: str) -> bytes:
        return data


class StringDeserializer:
    ACCEPT = ("application/json",)

    def __init__(self, encoding: str = "UTF-8") -> None:
        self.encoding = encoding

    def deserialize(self, data: bytes, content_type: str) -> str:
        return data.decode(self.encoding)


class JSONDeserializer:
    ACCEPT = ("application/json",)

    def deserialize(self, data: bytes, content_type: str) -> Any:
        return json.loads(data)


class JSONLinesDeserializer:
    ACCEPT = ("application/jsonlines",)

    def deserialize(self, data: bytes, content_type: str) -> list[Any]:
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
