"""``sagemaker.Session`` / ``sagemaker.session``: region, default bucket, ``upload_data``, ``s3_input``.

Two behaviours, chosen per call by ``openic.storage.is_configured()``:

* an S3 store is configured (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` is set, or boto3 finds credentials):
  ``default_bucket`` creates ``sagemaker-REGION-ACCOUNT`` if missing and ``upload_data`` really uploads (boto3,
  changed files only), returning ``s3://`` URIs as SageMaker does;
* otherwise, offline: ``upload_data`` copies the files into a local folder standing in for the bucket
  (``$OPENIC_HOME/s3/BUCKET/KEY_PREFIX``) and returns that folder, so the workshop's cells that upload and then
  train on the returned location still run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from openic import storage
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
        self._bucket: str | None = None

    @property
    def boto_region_name(self) -> str:
        return self._region

    def default_bucket(self) -> str:
        """``sagemaker-REGION-ACCOUNT``; with an S3 store configured it is created if missing (account from STS,
        else ``000000000000``)."""
        if not storage.is_configured():
            return f"sagemaker-{self._region}-000000000000"
        if self._bucket is None:
            name = storage.default_bucket_name(self._region)
            storage.ensure_bucket(name, self._region)
            self._bucket = name
        return self._bucket

    def upload_data(self, path: str | os.PathLike[str], bucket: str | None = None, key_prefix: str = "data",
                    **ignored: object) -> str:
        """Upload ``path`` (a file or a folder) to ``s3://BUCKET/KEY_PREFIX``; returns where it went.

        With an S3 store configured: a real upload of the files that changed, returning ``s3://BUCKET/KEY_PREFIX``
        for a folder and ``s3://BUCKET/KEY_PREFIX/NAME`` for a file (SageMaker's return values). Without one: a
        copy into the local stand-in folder ``$OPENIC_HOME/s3/BUCKET/KEY_PREFIX``, which is returned.
        """
        source = Path(path)
        if not source.exists():
            raise ClientError(f"upload_data: {source} does not exist")
        prefix = key_prefix.strip("/")
        if storage.is_configured():
            target = storage.s3_uri(bucket or self.default_bucket(), prefix)
            if source.is_dir():
                storage.upload_dir(source, target)
                return target.rstrip("/")
            return storage.upload_file(source, target.rstrip("/") + "/")
        local = openic_home() / "s3" / (bucket or self.default_bucket()) / prefix
        local.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, local, dirs_exist_ok=True)
        else:
            shutil.copy2(source, local / source.name)
        log.info("no S3 store is configured (no AWS_ENDPOINT_URL, no credentials): %s copied to the local folder "
                 "%s", source, local)
        return str(local)


__all__ = ["Session", "default_region", "get_execution_role", "s3_input"]
