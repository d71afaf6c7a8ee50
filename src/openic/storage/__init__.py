"""Remote storage for channels, checkpoints and models: ``s3://`` through boto3 (``openic.storage.s3``).

Torch-free, and above only ``errors`` and ``fileio``. ``is_s3``, ``parse_s3_uri`` and ``s3_uri`` never need
boto3; every other name loads ``openic.storage.s3`` (and boto3) on first use, so a local-only install imports
this package freely and hears "install boto3" only when it touches S3.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from openic.errors import ClientError
from openic.storage.uri import is_s3, parse_s3_uri, s3_uri

if TYPE_CHECKING:
    from openic.storage.s3 import (  # noqa: F401
        ObjectInfo,
        S3RangedFile,
        account_id,
        clear_client_cache,
        client,
        default_bucket_name,
        download_dir,
        download_prefix,
        ensure_bucket,
        list_objects,
        open_ranged,
        upload_dir,
        upload_file,
    )

_LAZY = ("ObjectInfo", "S3RangedFile", "account_id", "clear_client_cache", "client", "default_bucket_name",
         "download_dir", "download_prefix", "ensure_bucket", "list_objects", "open_ranged",
         "upload_dir", "upload_file")
__all__ = ["is_configured", "is_s3", "parse_s3_uri", "s3_uri", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'openic.storage' has no attribute {name!r}")
    try:
        from openic.storage import s3
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("boto3", "botocore"):
            raise ClientError("s3:// locations need boto3, which is not installed: pip install 'boto3>=1.28'") from e
        raise
    return getattr(s3, name)


def is_configured() -> bool:
    """Whether an S3 store is set up: ``AWS_ENDPOINT_URL[_S3]`` is set, or boto3 is installed and finds credentials.

    Callers with an offline fallback (``sagemaker.Session``) ask this; without boto3 the answer is no.
    """
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return True
    try:
        from openic.storage import s3
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("boto3", "botocore"):
            return False
        raise
    return s3.is_configured()
