"""Local copies of ``s3://`` locations (SageMaker's File mode): one cache per host, shared by its processes.

The cache is ``OPENIC_S3_CACHE`` or ``~/.cache/openic/s3``; :func:`openic.storage.download_prefix` makes the copy
resumable and checksummed, and the ranks of one host wait for one download instead of each fetching their own.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from openic.storage.uri import is_s3

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("OPENIC_S3_CACHE") or Path.home() / ".cache" / "openic" / "s3")


def staging_dir(uri: str) -> Path:
    """The local folder that stands for an ``s3://`` output ``uri`` on this host (the same one for every rank and
    every rerun, so work already done there is found again)."""
    from openic.storage.uri import parse_s3_uri

    bucket, key = parse_s3_uri(uri)  # ClientError for a malformed URI
    digest = hashlib.sha256(f"{bucket}/{key.strip('/')}".encode()).hexdigest()[:16]
    return cache_root() / "outputs" / bucket / digest


def local_path(value: str | os.PathLike[str]) -> Path:
    """``value`` as a local path: an ``s3://`` object or prefix is downloaded first (ClientError naming it when
    the bucket, the key or the endpoint is missing)."""
    if not is_s3(value):
        return Path(value)
    from openic.storage import download_prefix

    local = download_prefix(str(value), cache_root())
    log.info("%s is in the local cache at %s", value, local)
    return local
