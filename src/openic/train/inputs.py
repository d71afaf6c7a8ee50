"""Channel locations: a local path, or an ``s3://`` URI copied once into this host's cache (SageMaker's File mode).

The cache is ``OPENIC_S3_CACHE`` or ``~/.cache/openic/s3``; :func:`openic.storage.download_prefix` makes the copy
resumable and checksummed, and the ranks of one host wait for one download instead of each fetching their own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from openic.storage import is_s3

log = logging.getLogger(__name__)


def s3_cache_root() -> Path:
    return Path(os.environ.get("OPENIC_S3_CACHE") or Path.home() / ".cache" / "openic" / "s3")


def local_path(value: str | os.PathLike[str]) -> Path:
    """``value`` as a local path: an ``s3://`` object or prefix is downloaded first (ClientError naming it when
    the bucket, the key or the endpoint is missing)."""
    if not is_s3(value):
        return Path(value)
    from openic.storage import download_prefix

    local = download_prefix(str(value), s3_cache_root())
    log.info("%s is in the local cache at %s", value, local)
    return local
