"""``s3://`` support through boto3: the one module the rest of openic imports for S3.

It re-exports the URI helpers, client and listing (``s3base``), File-mode caching (``s3cache.download_prefix``)
and ranged reading (``s3file.open_ranged``), and adds uploads (changed files only), ``download_dir`` for
pulling checkpoints back, and SageMaker's default bucket. Every S3 failure surfaces as ``ClientError`` naming the
URI (``s3base.map_error``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.exceptions as bex
from boto3.s3.transfer import TransferConfig

from openic.errors import ClientError
from openic.fileio import atomic_path
from openic.storage.s3base import (
    ObjectInfo,
    clear_client_cache,
    client,
    env_key,
    error_code,
    list_objects,
    map_error,
    objects_under,
    quick_client,
    s3_errors,
    same_content,
)
from openic.storage.s3cache import download_prefix, local_path
from openic.storage.s3file import S3RangedFile, open_ranged
from openic.storage.uri import is_s3, parse_s3_uri, s3_uri

log = logging.getLogger(__name__)

PART_SIZE = 16 << 20  # multipart uploads above this size, in parts of this size (so their ETag can be recomputed)
TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=8)
LOCAL_ACCOUNT = "000000000000"
_TEMP = re.compile(r"\..+\.tmp-[A-Za-z0-9_.]+-[0-9]+")  # fileio.atomic_path's in-flight files: never uploaded
_accounts: dict[tuple[str | int | None, ...], str] = {}
_configured: dict[tuple[str | int | None, ...], bool] = {}


def is_configured() -> bool:
    """Whether an S3 store is set up: ``AWS_ENDPOINT_URL[_S3]`` is set, or boto3 finds credentials (cached)."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return True
    key = env_key("credentials")
    if key not in _configured:
        try:
            _configured[key] = boto3.session.Session().get_credentials() is not None
        except bex.BotoCoreError as e:  # e.g. AWS_PROFILE names no profile: the user meant S3; let its calls say why
            log.warning("AWS configuration error: %s", e)
            _configured[key] = True
    return _configured[key]


def _folder(uri: str) -> tuple[str, str]:
    bucket, key = parse_s3_uri(uri)
    return bucket, (key.rstrip("/") + "/" if key.strip("/") else "")


def upload_file(path: str | os.PathLike[str], uri: str) -> str:
    """Upload one file to ``uri`` (a key, or a prefix ending in ``/`` to put it under); returns the object's URI.

    Files over 16 MiB go up in parts through boto3's managed transfer.
    """
    source = Path(path)
    if not source.is_file():
        raise ClientError(f"cannot upload {source} to {uri}: it is not a file")
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        key += source.name
    target = s3_uri(bucket, key)
    with s3_errors(target):
        client().upload_file(str(source), bucket, key, Config=TRANSFER)
    return target


def upload_dir(local_dir: str | os.PathLike[str], uri: str, *, skip: Callable[[str], bool] | None = None) -> int:
    """Upload the files under ``local_dir`` to ``uri/RELATIVE/PATH`` unless S3 already has the same bytes.

    "Same" is size plus ETag: the MD5 for single-part objects, the recomputed multipart ETag for ours. ``skip``
    gets each relative POSIX path and returns True to leave it out; ``fileio``'s in-flight temp files are always
    left out. Remote objects with no local file are kept. Returns how many files were uploaded.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise ClientError(f"cannot upload {root} to {uri}: it is not a folder")
    bucket, prefix = _folder(uri)
    remote = {o.key: o for o in objects_under(bucket, prefix, uri)}
    sent = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if _TEMP.fullmatch(path.name) or (skip is not None and skip(rel)):
            continue
        known = remote.get(prefix + rel)
        if known is not None and same_content(path, known, (PART_SIZE,)):
            continue
        upload_file(path, s3_uri(bucket, prefix + rel))
        sent += 1
    log.info("uploaded %d file(s) from %s to %s", sent, root, s3_uri(bucket, prefix))
    return sent


def download_dir(uri: str, local_dir: str | os.PathLike[str], *, skip: Callable[[str], bool] | None = None) -> int:
    """Fetch the objects under ``uri`` into ``local_dir`` (relative key paths kept) unless already there.

    Returns the number of files fetched; a prefix with nothing under it gives 0 (no checkpoints yet), while a
    missing bucket raises ``ClientError``. Each file appears complete or not at all. ``skip`` gets each relative
    key and returns True to leave it out.
    """
    bucket, prefix = _folder(uri)
    root = Path(local_dir)
    fetched = 0
    for obj in objects_under(bucket, prefix, uri):
        if skip is not None and skip(obj.key[len(prefix):]):
            continue
        path = local_path(root, obj.key[len(prefix):], uri)
        if same_content(path, obj, (PART_SIZE,)):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with s3_errors(s3_uri(bucket, obj.key)), atomic_path(path) as tmp:
            client().download_file(bucket, obj.key, str(tmp), Config=TRANSFER)
        fetched += 1
    if fetched:
        log.info("downloaded %d file(s) from %s to %s", fetched, s3_uri(bucket, prefix), root)
    return fetched


def account_id() -> str:
    """The AWS account of the credentials (STS, one quick try), or ``000000000000`` when it cannot tell."""
    key = env_key("sts")
    if key not in _accounts:
        try:
            _accounts[key] = str(quick_client("sts").get_caller_identity()["Account"])
        except Exception as e:  # noqa: BLE001 - any failure means "unknown account", never a failed job
            log.debug("no account id from STS (%s): using %s", e, LOCAL_ACCOUNT)
            _accounts[key] = LOCAL_ACCOUNT
    return _accounts[key]


def default_bucket_name(region: str) -> str:
    """SageMaker's default bucket name, ``sagemaker-REGION-ACCOUNT``."""
    return f"sagemaker-{region}-{account_id()}"


def ensure_bucket(bucket: str, region: str) -> None:
    """Create ``bucket`` in ``region`` unless it exists (idempotent; us-east-1 takes no LocationConstraint).

    Raises:
        ClientError: the name is invalid, taken by another account, or the credentials may not create it.
    """
    uri = s3_uri(bucket)
    parse_s3_uri(uri)
    s3 = client(region)
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except bex.ClientError as e:
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise map_error(e, uri) from e
    except bex.BotoCoreError as e:
        raise map_error(e, uri) from e
    args = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=bucket, **args)
        log.info("created the S3 bucket %s in %s", bucket, region)
    except bex.ClientError as e:
        if error_code(e) == "BucketAlreadyOwnedByYou":
            return
        if error_code(e) == "BucketAlreadyExists":
            raise ClientError(f"the S3 bucket name {bucket!r} is taken by another AWS account; choose another "
                              "bucket") from e
        raise map_error(e, uri) from e
    except bex.BotoCoreError as e:
        raise map_error(e, uri) from e


__all__ = ["ObjectInfo", "S3RangedFile", "account_id", "clear_client_cache", "client", "default_bucket_name",
           "download_dir", "download_prefix", "ensure_bucket", "is_configured", "is_s3", "list_objects",
           "open_ranged", "parse_s3_uri", "s3_uri", "upload_dir", "upload_file"]
