"""One writer per ``s3://`` prefix across hosts: a lease object taken with S3's conditional writes.

A local lock (:class:`openic.fileio.FileLock`) only sees jobs on its own host; two hosts writing one S3 output
would interleave their checkpoints and metrics. So rank 0 also creates ``<prefix>/.openic-job.lock`` with
``If-None-Match: *`` (S3 and S3-compatible stores refuse the write when the object exists) and renews it with
``If-Match`` on its ETag every ``ttl/4`` seconds. A second job finds the lease and is refused, naming the holder.

A holder that died (``kill -9``, a lost host) cannot release it, so a lease is *stale*, and may be taken over
(again with ``If-Match``, so two jobs cannot both take it), when it was not renewed for its TTL, measured on the
store's own clock (``LastModified`` against the response's ``Date``), or at once when it names a process of this
machine and PID namespace that no longer runs (the rerun of a crashed job on the same host).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.exceptions as bex

from openic.errors import ClientError
from openic.fileio import LockedError
from openic.settings import env_seconds
from openic.storage.s3base import client, endpoint_url, error_code, s3_errors
from openic.storage.uri import parse_s3_uri

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
TTL_ENV = "OPENIC_S3_LEASE_TTL_S"  # seconds a lease lives without renewal (tests shorten it)
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def lease_ttl() -> float:
    return env_seconds(TTL_ENV, DEFAULT_TTL_S, 1.0, 86400.0)


def process_space() -> str:
    """Where a PID means one process: this boot of this machine and this PID namespace ('' if unknown). A
    hostname is not enough: every SageMaker container is ``algo-1``, and containers share a kernel."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process (or a value we cannot check): assume alive
    return True


def _check_conditional_writes(uri: str) -> None:
    """botocore's S3 model must know the conditional-write parameters (S3 has them since late 2024)."""
    import botocore

    members = client().meta.service_model.operation_model("PutObject").input_shape.members
    if not {"IfMatch", "IfNoneMatch"} <= set(members):
        raise ClientError(f"{uri}: guarding an S3 output needs conditional writes (PutObject If-Match / "
                          f"If-None-Match), which botocore {botocore.__version__} does not know; upgrade boto3 "
                          "(pip install -U 'boto3>=1.36')")


class S3Lease:
    """Hold the lease object ``uri`` while the ``with`` body runs; ``what`` starts the refusal message."""

    def __init__(self, uri: str, what: str, ttl_s: float | None = None) -> None:
        self.uri, self.what = uri.rstrip("/"), what
        self.bucket, self.key = parse_s3_uri(self.uri)
        self.ttl_s = lease_ttl() if ttl_s is None else float(ttl_s)
        self.holder = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "space": process_space(), "ttl_s": self.ttl_s, "since": time.time()}
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _put(self, **condition: str) -> str:
        body = json.dumps({**self.holder, "renewed": time.time()}).encode()  # a new ETag at every renewal
        return str(client().put_object(Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json",
                                       **condition)["ETag"])

    def acquire(self) -> S3Lease:
        _check_conditional_writes(self.uri)
        with s3_errors(self.uri):
            for _ in range(3):  # the lease may vanish (released) between our refused create and our read
                try:
                    self.etag = self._put(IfNoneMatch="*")
                    self._check_refused()
                    break
                except bex.ClientError as e:
                    if error_code(e) not in _CONFLICT:
                        raise
                held = self._read()
                if held is not None:
                    self.etag = self._take_over(*held)
                    break
            else:
                raise LockedError(f"{self.what}: the lease {self.uri} keeps changing hands; try again")
        self._thread = threading.Thread(target=self._renew, name="s3-lease", daemon=True)
        self._thread.start()
        log.info("Holding the lease %s", self.uri)
        return self

    def _check_refused(self) -> None:
        """A second create must be refused; a store that ignores ``If-None-Match`` protects nothing, so say so."""
        try:
            self.etag = self._put(IfNoneMatch="*")
        except bex.ClientError as e:
            if error_code(e) in _CONFLICT:
                return
            raise
        log.warning("the S3 store at %s ignores conditional writes (If-None-Match): the lease %s cannot keep a "
                    "second job on another host off this output", endpoint_url(), self.uri)

    def _read(self) -> tuple[dict[str, Any], str, float] | None:
        """The current lease: its holder, ETag and age in seconds on the store's clock; None if it is gone."""
        try:
            r = client().get_object(Bucket=self.bucket, Key=self.key)
        except bex.ClientError as e:
            if error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        raw = r["Body"].read()
        try:
            holder = json.loads(raw)
            holder = holder if isinstance(holder, dict) else {}
        except ValueError:
            holder = {}
        date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return holder, str(r["ETag"]), max(0.0, now - r["LastModified"].timestamp())

    def _take_over(self, holder: dict[str, Any], etag: str, age_s: float) -> str:
        """Replace a stale lease (conditional on its ETag), or refuse, naming who holds it."""
        try:
            ttl = float(holder.get("ttl_s", DEFAULT_TTL_S))
            pid = int(holder.get("pid", 0))
        except (TypeError, ValueError):
            ttl, pid = DEFAULT_TTL_S, 0
        if holder.get("owner") == self.holder["owner"]:  # our own create, answered 412 when botocore retried it
            return etag
        host = str(holder.get("host", "an unknown host"))
        space = self.holder["space"]
        dead = bool(space) and holder.get("space") == space and 0 < pid != os.getpid() and not _pid_alive(pid)
        if not dead and age_s <= ttl:
            raise LockedError(f"{self.what}: another job (host {host}, PID {pid or 'unknown'}) holds its lease "
                              f"{self.uri}, renewed {age_s:.0f} s ago; wait for it to finish or stop it (a lease "
                              f"not renewed for {ttl:g} s is taken over)")
        why = f"its process {pid} on this machine is gone" if dead else f"not renewed for {age_s:.0f} s"
        try:
            new = self._put(IfMatch=etag)
        except bex.ClientError as e:
            if error_code(e) in _CONFLICT + ("NoSuchKey", "404"):
                raise LockedError(f"{self.what}: another job took over the stale lease {self.uri} first") from None
            raise
        log.warning("Took over the stale lease %s of host %s, PID %s (%s)", self.uri, host, pid, why)
        return new

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.etag = self._put(IfMatch=str(self.etag))
            except bex.ClientError as e:
                if error_code(e) in _CONFLICT + ("NoSuchKey", "404") and not self._still_ours():
                    self.lost = True
                    log.error("Lost the lease %s: another job took it over (this one was not renewed in time); "
                              "the two may now write the same output", self.uri)
                    return
                log.warning("could not renew the lease %s: %s", self.uri, e)
            except bex.BotoCoreError as e:
                log.warning("could not renew the lease %s: %s", self.uri, e)

    def _still_ours(self) -> bool:
        """After a refused renewal: whether the lease is ours all the same (a retried renewal had gone through)."""
        try:
            held = self._read()
        except (bex.ClientError, bex.BotoCoreError):
            return False
        if held is None or held[0].get("owner") != self.holder["owner"]:
            return False
        self.etag = held[1]
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.etag is None or self.lost:
            return
        try:
            client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except (bex.ClientError, bex.BotoCoreError) as e:
            log.warning("could not release the lease %s (%s); it expires %g s after its last renewal", self.uri,
                        e, self.ttl_s)
        self.etag = None

    def __enter__(self) -> S3Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
