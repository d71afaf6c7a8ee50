"""The shared boto3 client, listing, ETags, and the one place where S3 failures become ``ClientError`` messages.

The client comes from boto3's standard chain (environment, ``~/.aws/config`` and ``credentials``, container or
instance roles); boto3 ≥ 1.28 itself honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (MinIO, moto,
LocalStack), so no endpoint is passed here. Timeouts and retries are bounded so that an unreachable endpoint fails
in about 15 s rather than minutes, while a transient 5xx or throttle is retried with backoff.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import botocore.exceptions as bex
from botocore.config import Config

from openic.errors import ClientError
from openic.storage.uri import SCHEME, parse_s3_uri, s3_uri

DEFAULT_REGION = "us-east-1"
# 3 attempts in all, ~5 s each to connect: an endpoint nobody answers on fails in ~15-20 s
CONFIG = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                max_pool_connections=16)
# a quick question (STS account id): one attempt, a couple of seconds
QUICK_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=3)
# every variable that changes which client boto3 would build; a change means a new client
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")

_clients: dict[tuple[str | int | None, ...], Any] = {}
_clients_lock = threading.Lock()


def _after_fork() -> None:  # a lock held by another thread at fork time would never be released in the child
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork)


def env_key(service: str) -> tuple[str | int | None, ...]:
    return (service, os.getpid(), *(os.environ.get(k) for k in _ENV_KEYS))


def _make_client(service: str, config: Config, region: str | None = None) -> Any:
    key = env_key(service) + (id(config), region)
    with _clients_lock:
        made = _clients.get(key)
        if made is None:
            session = boto3.session.Session()
            region = region or session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION
            made = _clients[key] = session.client(service, region_name=region, config=config)
    return made


def client(region: str | None = None) -> Any:
    """The S3 client of this process and environment (cached per PID and AWS_* variables; thread-safe).

    Its region is the configured one, else us-east-1; ``region`` asks for another (creating a bucket there).
    """
    return _make_client("s3", CONFIG, region)


def quick_client(service: str) -> Any:
    """A client for one short question (one attempt, seconds of timeout), e.g. STS ``get_caller_identity``."""
    return _make_client(service, QUICK_CONFIG)


def clear_client_cache() -> None:
    """Forget the cached clients (tests that change the environment call this)."""
    with _clients_lock:
        _clients.clear()


def endpoint_url() -> str:
    """The S3 endpoint the client talks to (for messages)."""
    try:
        return str(client().meta.endpoint_url)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "(default AWS)"


_MISSING_KEY = ("NoSuchKey", "404", "NotFound")
_DENIED = ("AccessDenied", "403", "Forbidden", "AllAccessDisabled")
_BAD_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired")
_CONNECTION = (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ConnectionClosedError,
               bex.ProxyConnectionError, bex.ReadTimeoutError)
CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), "
                    "or AWS_PROFILE with ~/.aws/credentials (`aws configure`), or run where an IAM role is attached")


def error_code(e: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` ('NoSuchKey', '404', ...), else ''."""
    if isinstance(e, bex.ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


def _bucket_exists(bucket: str) -> bool | None:
    try:
        client().head_bucket(Bucket=bucket)
    except bex.ClientError as e:
        return False if error_code(e) in _MISSING_KEY + ("NoSuchBucket",) else None
    except bex.BotoCoreError:
        return None
    return True


def map_error(e: BaseException, uri: str) -> ClientError:
    """The ``ClientError`` to raise for a failed S3 call on ``uri``: it names the URI and what to check."""
    if isinstance(e, ClientError):
        return e
    if isinstance(e, boto3.exceptions.Boto3Error) and isinstance(e.__cause__ or e.__context__, Exception):
        e = e.__cause__ or e.__context__  # S3UploadFailedError wraps the botocore error that says what failed
    bucket = uri[len(SCHEME):].partition("/")[0] if uri.startswith(SCHEME) else uri
    if isinstance(e, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return ClientError(f"no usable AWS credentials to access {uri} ({e}): {CREDENTIALS_HELP}")
    if isinstance(e, _CONNECTION):
        url = getattr(e, "kwargs", {}).get("endpoint_url") or endpoint_url()
        configured = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "unset"
        return ClientError(f"cannot reach the S3 endpoint {url} for {uri} ({e}): check AWS_ENDPOINT_URL / "
                           f"AWS_ENDPOINT_URL_S3 (now {configured}) and the network")
    code = error_code(e)
    if code == "NoSuchBucket" or (code in _MISSING_KEY and getattr(e, "operation_name", "") == "HeadBucket"):
        return ClientError(f"S3 bucket {bucket!r} does not exist ({uri})")
    if code in _MISSING_KEY:
        if getattr(e, "operation_name", "") == "HeadObject" and _bucket_exists(bucket) is False:
            return ClientError(f"S3 bucket {bucket!r} does not exist ({uri})")
        return ClientError(f"S3 object {uri} does not exist")
    if code in _DENIED:
        return ClientError(f"access denied to {uri}: the AWS credentials in use may not read/write it (check the "
                           "bucket policy and the IAM permissions s3:GetObject, s3:ListBucket, s3:PutObject)")
    if code in _BAD_CREDENTIALS:
        return ClientError(f"S3 refused the AWS credentials for {uri} ({code}): {CREDENTIALS_HELP}")
    if code in ("PreconditionFailed", "412"):
        return ClientError(f"S3 object {uri} changed while it was being read; run again")
    if isinstance(e, bex.ClientError):
        message = e.response.get("Error", {}).get("Message", "")
        return ClientError(f"S3 request for {uri} failed: {code or 'error'} {message}".rstrip())
    return ClientError(f"S3 request for {uri} failed: {e}")


@contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore failures inside the block into ``map_error``'s ``ClientError``."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError, boto3.exceptions.Boto3Error) as e:
        raise map_error(e, uri) from e


@dataclass(frozen=True)
class ObjectInfo:
    """One S3 object: its full key, size in bytes, and ETag without quotes."""

    key: str
    size: int
    etag: str

    @property
    def multipart(self) -> bool:
        """A multipart upload's ETag is ``md5-of-part-md5s-N``, not the MD5 of the content."""
        return "-" in self.etag


def _etag(value: object) -> str:
    return str(value or "").strip('"')


def objects_under(bucket: str, prefix: str, uri: str) -> list[ObjectInfo]:
    """Every object whose key starts with ``prefix`` (paginated; maybe none), folder markers left out."""
    found = []
    with s3_errors(uri):
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [ObjectInfo(o["Key"], int(o["Size"]), _etag(o.get("ETag")))
                      for o in page.get("Contents", ()) if not o["Key"].endswith("/")]
    return found


def list_objects(uri: str) -> list[ObjectInfo]:
    """The objects of ``uri``: the one object when it names an exact key, else every object under ``KEY/``.

    Folder markers (keys ending in ``/``) are left out. Raises ``ClientError`` when nothing matches.
    """
    bucket, key = parse_s3_uri(uri)
    if key and not key.endswith("/"):
        try:
            head = client().head_object(Bucket=bucket, Key=key)
            return [ObjectInfo(key, int(head["ContentLength"]), _etag(head.get("ETag")))]
        except bex.ClientError as e:
            if error_code(e) not in _MISSING_KEY + _DENIED:  # 403: no s3:GetObject; the listing may still work
                raise map_error(e, uri) from e
        except bex.BotoCoreError as e:
            raise map_error(e, uri) from e
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    found = objects_under(bucket, prefix, uri)
    if not found:
        raise ClientError(f"no objects under {s3_uri(bucket, prefix)} (S3 bucket {bucket!r} has nothing there)")
    return found


def local_etag(path: Path, part_size: int | None = None) -> str:
    """The ETag S3 gives ``path``'s bytes: their MD5, or for a multipart upload of ``part_size`` parts
    ``md5(md5(part1) + md5(part2) ...)-N``."""
    whole, parts, count = hashlib.md5(usedforsecurity=False), [], 0
    block = part_size or 8 << 20
    with open(path, "rb") as f:
        while data := f.read(block):
            count += 1
            if part_size:
                parts.append(hashlib.md5(data, usedforsecurity=False).digest())
            else:
                whole.update(data)
    if not part_size:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{max(count, 1)}"


def same_content(path: Path, info: ObjectInfo, part_sizes: tuple[int, ...] = ()) -> bool:
    """Whether the local file holds ``info``'s bytes, judged by size and ETag.

    A multipart ETag only matches when the parts were cut at one of ``part_sizes`` (ours, or common ones with the
    right part count); any other multipart object counts as different, which costs a transfer, never a wrong file.
    """
    try:
        if path.stat().st_size != info.size:
            return False
    except OSError:
        return False
    if not info.multipart:
        return local_etag(path) == info.etag
    count = int(info.etag.rsplit("-", 1)[1]) if info.etag.rsplit("-", 1)[1].isdigit() else -1
    for size in dict.fromkeys(part_sizes + tuple(1 << k for k in range(20, 33))):
        if -(-info.size // size) == count and local_etag(path, size) == info.etag:
            return True
    return False
