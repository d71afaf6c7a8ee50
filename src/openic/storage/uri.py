"""``s3://`` URIs, without boto3: telling a URI from a local path must not need the S3 client installed."""

from __future__ import annotations

import os
import re

from openic.errors import ClientError, shown

SCHEME = "s3://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        text = os.fspath(value)
        if isinstance(text, str) and text.startswith("s3:/") and not text.startswith(SCHEME):
            return SCHEME + text[len("s3:/"):]  # Path("s3://b/k") collapses the double slash
        return text if isinstance(text, str) else None
    return None


def is_s3(value: object) -> bool:
    """Whether ``value`` (a str or path-like) is an ``s3://`` URI rather than a local path."""
    text = _text(value)
    return text is not None and text.startswith(SCHEME)


def parse_s3_uri(uri: str | os.PathLike[str]) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``; the key (or prefix, maybe empty) has no leading slash.

    Raises:
        ClientError: not an ``s3://`` URI, no bucket, or a bucket name S3 would refuse.
    """
    text = _text(uri)
    if text is None or not text.startswith(SCHEME):
        raise ClientError(f"{shown(uri, 200)} is not an S3 URI: expected s3://BUCKET/KEY")
    bucket, _, key = text[len(SCHEME):].partition("/")
    if not bucket:
        raise ClientError(f"{shown(text, 200)} names no bucket: expected s3://BUCKET/KEY")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IPV4.fullmatch(bucket):
        raise ClientError(f"{shown(text, 200)}: {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, "
                          "digits, '.' and '-', starting and ending with a letter or digit, not an IP address)")
    return bucket, key.lstrip("/")


def s3_uri(bucket: str, key: str = "") -> str:
    return f"{SCHEME}{bucket}/{key}"
