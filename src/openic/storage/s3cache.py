"""File mode: copy an S3 channel once into a local cache folder, resumably, checksummed, shared by local processes.

Layout under ``cache_root``: ``BUCKET/KEY...`` holds the objects under their key paths (what training reads);
``.openic-s3/`` (no bucket name starts with a dot, so it never collides) holds per bucket a lock file, a
manifest (per key what was downloaded and verified: size, ETag, how it was checked, the local mtime; shared by
overlapping URIs of the bucket) and the ETag each ``<name>.part`` belongs to. Training ranks of one host calling
``download_prefix`` together queue on the bucket's lock: the first downloads, the others wait and find everything
in the manifest. (One lock per bucket, not per prefix, because overlapping prefixes share files.)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions as bex

from openic.errors import ClientError
from openic.fileio import OutputError, atomic_write_text, os_reason, replace_durably
from openic.storage.s3base import (
    ObjectInfo,
    client,
    error_code,
    list_objects,
    local_etag,
    map_error,
    parse_s3_uri,
    s3_uri,
)

log = logging.getLogger(__name__)

META = ".openic-s3"
PART = ".part"
ATTEMPTS = 4  # tries of one object's body stream (each continues the .part); botocore retries each request too
BACKOFF_S = 0.5  # first wait between tries; doubles
FLUSH_S = 10.0  # how often the manifest is saved during a long download, so a crash keeps most of the work
THREADS = 8
# errors that break a body stream midway: the bytes so far stay in the .part and the next try continues them
TRANSIENT = (bex.ResponseStreamingError, bex.IncompleteReadError, bex.ReadTimeoutError, bex.ConnectionError,
             ConnectionError, TimeoutError)


class WaitingLock:
    """An exclusive ``flock`` that waits for its holder (``fileio.FileLock`` refuses instead).

    The file is never deleted (deleting a lock file races with the next locker); the kernel releases the lock
    when its holder dies, ``kill -9`` included. On a file system without locks it goes on unprotected.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.fd = path, what, -1

    def __enter__(self) -> WaitingLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ClientError(f"{self.what}: cannot create the lock file {self.path}: {os_reason(e)}") from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.warning("cannot lock %s (%s): going on without protection", self.path, os_reason(e))
                return self
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            log.info("%s: waiting for process %s, which holds %s", self.what, holder, self.path)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def local_path(bucket_dir: Path, key: str, uri: str) -> Path:
    """Where ``key`` goes; refuses keys that would land outside ``bucket_dir`` or collide with a shorter spelling."""
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ClientError(f"the S3 object key {key!r} under {uri} cannot be stored as a local file (empty, '.' or "
                          "'..' path parts would escape or collide in the cache folder); rename it in S3")
    return bucket_dir.joinpath(*parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Download:
    """One ``download_prefix`` call holding the lock: the manifest, and fetching objects into their paths."""

    def __init__(self, uri: str, bucket: str, root: Path) -> None:
        self.uri, self.bucket, self.bucket_dir = uri, bucket, root / bucket
        self.meta = root / META / bucket
        self.manifest_path = self.meta / "manifest.json"
        self.entries: dict[str, dict[str, Any]] = _read_json(self.manifest_path).get("objects", {})
        self.lock, self.flushed, self.fetched = threading.Lock(), time.monotonic(), 0
        self.s3 = client()

    def cached(self, obj: ObjectInfo, path: Path) -> bool:
        """Whether ``path`` already holds ``obj``: its manifest entry matches, or (unrecorded) its MD5 does."""
        entry = self.entries.get(obj.key)
        try:
            st = path.stat()
        except OSError:
            return False
        if entry and (entry.get("size"), entry.get("etag"), entry.get("mtime_ns")) == (obj.size, obj.etag,
                                                                                          st.st_mtime_ns):
            return st.st_size == obj.size
        if st.st_size == obj.size and not obj.multipart and local_etag(path) == obj.etag:
            self.record(obj, path, "md5")  # finished by a run that died before saving its manifest
            return True
        return False

    def record(self, obj: ObjectInfo, path: Path, verified: str) -> None:
        with self.lock:
            self.entries[obj.key] = {"size": obj.size, "etag": obj.etag, "verified": verified,
                                     "mtime_ns": path.stat().st_mtime_ns}
            if time.monotonic() - self.flushed > FLUSH_S:
                self.save()

    def save(self, stale: Callable[[str], bool] | None = None) -> None:
        if stale is not None:
            self.entries = {k: v for k, v in self.entries.items() if not stale(k)}
        self.meta.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest_path, json.dumps({"uri": self.uri, "objects": self.entries}, indent=0))
        self.flushed = time.monotonic()

    def fetch(self, obj: ObjectInfo, path: Path) -> None:
        """Download ``obj`` into ``path`` through ``path.part`` (continued when it belongs to this ETag)."""
        part, tag = path.with_name(path.name + PART), self.meta / "parts" / f"{_digest(obj.key)}.etag"
        try:
            owner = tag.read_text(encoding="utf-8")
        except OSError:
            owner = ""
        if owner != obj.etag or not part.is_file() or part.stat().st_size > obj.size:
            part.parent.mkdir(parents=True, exist_ok=True)
            part.unlink(missing_ok=True)
            tag.parent.mkdir(parents=True, exist_ok=True)
            tag.write_text(obj.etag, encoding="utf-8")
        fresh = False  # whether some try streamed the whole object from byte 0
        for attempt in range(ATTEMPTS + 1):
            have = part.stat().st_size if part.exists() else 0
            fresh = fresh or have == 0
            if have < obj.size or not part.exists():
                try:
                    self._get(obj, part, have)
                except TRANSIENT as e:
                    if attempt == ATTEMPTS:
                        raise ClientError(f"downloading {s3_uri(self.bucket, obj.key)} failed {ATTEMPTS + 1} "
                                          f"times (last: {e}); check the network and run again") from e
                    log.warning("reading %s broke off (%s); continuing in %.1f s", obj.key, e,
                                BACKOFF_S * 2 ** attempt)
                    time.sleep(BACKOFF_S * 2 ** attempt)
                    continue
            verified = self._verify(obj, part)
            if verified:
                replace_durably(part, path)
                tag.unlink(missing_ok=True)
                self.record(obj, path, verified)
                with self.lock:
                    self.fetched += 1
                return
            part.unlink(missing_ok=True)
            if fresh:
                raise ClientError(f"{s3_uri(self.bucket, obj.key)} arrived corrupted: its MD5 differs from its "
                                  f"ETag {obj.etag} (or it changed during the download); run again")
            log.warning("the partial download of %s was corrupted; downloading it again", obj.key)
        raise ClientError(f"could not download {s3_uri(self.bucket, obj.key)}")  # not reached

    def _get(self, obj: ObjectInfo, part: Path, have: int) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": obj.key, "IfMatch": f'"{obj.etag}"'}
        if have:
            args["Range"] = f"bytes={have}-"
        try:
            resp = self.s3.get_object(**args)
        except bex.ClientError as e:
            if error_code(e) in ("PreconditionFailed", "412"):
                raise ClientError(f"{s3_uri(self.bucket, obj.key)} changed after it was listed; run again") from e
            raise map_error(e, s3_uri(self.bucket, obj.key)) from e
        except bex.BotoCoreError as e:
            if isinstance(e, TRANSIENT):
                raise
            raise map_error(e, s3_uri(self.bucket, obj.key)) from e
        mode = "ab" if have and resp.get("ContentRange") else "wb"  # a server ignoring Range sends it all again
        with open(part, mode) as f:
            for chunk in resp["Body"].iter_chunks(1 << 20):
                f.write(chunk)

    def _verify(self, obj: ObjectInfo, part: Path) -> str | None:
        """``'md5'`` or ``'size'`` (what matched), or None when the bytes are wrong."""
        if part.stat().st_size != obj.size:
            return None
        if obj.multipart:
            return "size"  # a multipart ETag is not the content's MD5
        if local_etag(part) == obj.etag:
            return "md5"
        try:  # with SSE-KMS or SSE-C the ETag is not the MD5 either
            head = self.s3.head_object(Bucket=self.bucket, Key=obj.key)
        except (bex.ClientError, bex.BotoCoreError):
            return None
        kms = str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get("SSECustomerAlgorithm")
        return "size" if kms else None

    def prune(self, folder: Path, keep: set[Path]) -> None:
        """Delete files under ``folder`` that are no longer in S3 (and stale ``.part`` files): an exact copy."""
        if not folder.is_dir():
            return
        for path in folder.rglob("*"):
            if path not in keep and (path.is_file() or path.is_symlink()):
                log.info("removing %s from the cache: it is no longer under %s", path, self.uri)
                path.unlink(missing_ok=True)


def download_prefix(uri: str, cache_root: Path) -> Path:
    """Copy ``uri`` (an object or everything under a prefix) into ``cache_root/BUCKET/KEY``, once; return that path.

    Unchanged objects (same size and ETag as recorded, file untouched since) are not fetched again; objects gone
    from S3 are removed from the local folder. Partial files resume with a ranged GET. Single-part objects are
    checked against their MD5 ETag, multipart ones by size. Concurrent callers on one host wait for each other.

    Raises:
        ClientError: nothing at ``uri``, a key that cannot be a local path, S3 or network failures, corruption.
    """
    bucket, key = parse_s3_uri(uri)
    objects = list_objects(uri)
    exact = len(objects) == 1 and objects[0].key == key
    root = Path(cache_root)
    paths = {o.key: local_path(root / bucket, o.key, uri) for o in objects}
    keys = set(paths)
    clash = sorted(k for k in keys if k.endswith(PART) and k[:-len(PART)] in keys)
    if clash:
        raise ClientError(f"{uri}: the S3 keys {clash[0]!r} and {clash[0][:-len(PART)]!r} collide in the cache "
                          f"(partial downloads are kept as NAME{PART}); rename one")
    target = root / bucket / key.rstrip("/") if key else root / bucket
    with WaitingLock(root / META / f"{bucket}.lock", f"downloading {uri}"):
        job = _Download(uri, bucket, root)
        todo = [o for o in objects if not job.cached(o, paths[o.key])]
        if todo:
            total = sum(o.size for o in todo)
            log.info("downloading %d of %d objects (%.1f MB) from %s to %s", len(todo), len(objects), total / 1e6,
                     uri, target)
            started, pool = time.monotonic(), ThreadPoolExecutor(max_workers=min(THREADS, len(todo)))
            try:
                for future in [pool.submit(job.fetch, o, paths[o.key]) for o in todo]:
                    future.result()
            except OSError as e:  # disk full, read-only folder, a key that is both a file and a folder ...
                raise OutputError(f"cannot store {uri} in the cache folder {target}: {os_reason(e)}"
                                  f"{f' ({e.filename})' if e.filename else ''}") from e
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                job.save()  # what finished stays recorded even when something failed
            log.info("downloaded %s in %.1f s", uri, time.monotonic() - started)
        if not exact:
            job.prune(target, set(paths.values()))
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        job.save(stale=lambda k: k not in keys and (k == key if exact else k.startswith(prefix)))
    return paths[key] if exact else target
