"""``sagemaker.Session`` / ``sagemaker.session``: region, default bucket, ``upload_data``, ``s3_input``.

This version has no S3 client: ``upload_data`` copies the files into a local folder standing in for the bucket
(``$OPENIC_HOME/s3/BUCKET/KEY_PREFIX``) and returns that folder, so the workshop's cells that upload and then
train on the returned location run offline. ``s3://`` locations given to ``fit`` are refused with a message
saying to use local paths.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from openic.errors import ClientError
from openic.sdk.inputs import s3_input
from openic.sdk.jobs import openic_home

log = logging.getLogger(__name__)

LOCAL_ROLE = "arn:aws:iam::000000000000:role/openic-local"


def default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def get_execution_role(sagemaker_session: object = None) -> str:
    """A placeholder role ARN: nothing runs under IAM locally."""
    return LOCAL_ROLE


class Session:
    """Where SageMaker's Session keeps its region and bucket; ``boto_session`` etc. are accepted and unused."""

    def __init__(self, boto_session: object = None, sagemaker_client: object = None, **ignored: object) -> None:
        self.boto_session = boto_session
        self._region = default_region()

    @property
    def boto_region_name(self) -> str:
        return self._region

    def default_bucket(self) -> str:
        return f"sagemaker-{self._region}-000000000000"

    def upload_data(self, path: str | os.PathLike[str], bucket: str | None = None, key_prefix: str = "data",
                    **ignored: object) -> str:
        """Copy ``path`` (a file or a folder) to the local stand-in for ``s3://BUCKET/KEY_PREFIX``; returns it."""
        source = Path(path)
        if not source.exists():
            raise ClientError(f"upload_data: {source} does not exist")
        target = openic_home() / "s3" / (bucket or self.default_bucket()) / key_prefix.strip("/")
        target.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target / source.name)
        log.info("S3 is not available in this version: %s copied to the local folder %s", source, target)
        return str(target)


__all__ = ["Session", "default_region", "get_execution_role", "s3_input"]
