"""Pipe-mode-style reading: a seekable file object over one S3 object, fetched in ranged GETs, never whole.

Reading forward keeps ``read_ahead`` next chunks downloading in the background, so a RecordIO scan is not
stalled by each request's latency; a jump elsewhere drops them. At most ``1 + read_ahead`` chunks are held (or
being fetched) at any time. Every GET carries ``If-Match`` with the ETag seen at open, so an object replaced
mid-read fails loudly instead of mixing two versions. The object pickles as its URI and position (DataLoader
workers re-open their sources), never its client, threads or buffers.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import botocore.exceptions as bex

from openic.errors import ClientError
from openic.storage.s3base import client, error_code, map_error, parse_s3_uri, s3_errors

log = logging.getLogger(__name__)

MIB = 1 << 20
ATTEMPTS = 5  # tries of one chunk (botocore's own retries happen inside each)
BACKOFF_S = 0.2  # first wait between tries; doubles
TRANSIENT = (bex.ResponseStreamingError, bex.IncompleteReadError, bex.ReadTimeoutError, bex.ConnectionError,
             ConnectionError, TimeoutError)
_RETRY_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504")


class _ShortRead(Exception):
    """A ranged GET returned fewer bytes than asked for (a truncated body)."""


class S3RangedFile(io.BufferedIOBase):
    """Read-only, seekable bytes of ``s3://BUCKET/KEY``; ``read(n)`` returns ``n`` bytes unless at the end."""

    def __init__(self, uri: str, *, chunk_size: int = 8 * MIB, read_ahead: int = 2, size: int | None = None,
                 etag: str | None = None, position: int = 0) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ClientError(f"open_ranged({uri}): chunk_size must be a positive number of bytes, got {chunk_size!r}")
        if not isinstance(read_ahead, int) or read_ahead < 0:
            raise ClientError(f"open_ranged({uri}): read_ahead must be 0 or more chunks, got {read_ahead!r}")
        self.uri, self.chunk_size, self.read_ahead = uri, chunk_size, read_ahead
        self.bucket, self.key = parse_s3_uri(uri)
        if size is None or etag is None:
            with s3_errors(uri):
                head = client().head_object(Bucket=self.bucket, Key=self.key)
            size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
        self.size, self.etag, self._pos = size, etag, position
        self._start()

    def _start(self) -> None:
        self._chunks: dict[int, bytes] = {}
        self._pending: dict[int, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._last = -1  # the chunk read last: the next one counts as sequential
        self._counters = threading.Lock()
        self.gets = 0  # ranged GETs sent (tests and logs)
        self.max_chunks_held = 0  # most chunks held or in flight at once: stays <= 1 + read_ahead

    # pickling: the URI, the object's identity and the position; the copy starts with no client or buffers
    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "chunk_size": self.chunk_size, "read_ahead": self.read_ahead, "size": self.size,
                "etag": self.etag, "pos": self._pos, "closed": self.closed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.uri, self.chunk_size, self.read_ahead = state["uri"], state["chunk_size"], state["read_ahead"]
        self.bucket, self.key = parse_s3_uri(self.uri)
        self.size, self.etag, self._pos = state["size"], state["etag"], state["pos"]
        self._start()
        if state["closed"]:
            self.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        return b"".join(self._pieces(size))

    read1 = read

    def readinto(self, buffer: Any) -> int:
        view, filled = memoryview(buffer).cast("B"), 0
        for piece in self._pieces(len(view)):
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        return filled

    readinto1 = readinto

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if hasattr(self, "_chunks"):
            self._chunks.clear()
            self._pending.clear()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file ({self.uri})")

    def _pieces(self, size: int | None) -> Iterator[memoryview]:
        """Views of the bytes from the position on, ``size`` of them (all when None or negative), chunk by chunk."""
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        while self._pos < end:
            index, offset = divmod(self._pos, self.chunk_size)
            data = self._chunk(index)
            piece = memoryview(data)[offset:offset + end - self._pos]
            self._pos += len(piece)
            yield piece

    def _chunk(self, index: int) -> bytes:
        """Chunk ``index``: held, being read ahead, or fetched now; then top up the read-ahead when sequential."""
        sequential = index in (self._last, self._last + 1)
        self._last = index
        window = range(index + 1, index + 1 + self.read_ahead) if sequential else range(0)
        for j in [j for j in self._chunks if j != index]:
            del self._chunks[j]
        for j in [j for j in self._pending if j != index and j not in window]:
            future = self._pending.pop(j)
            if not future.cancel():  # already downloading: wait, so the memory bound holds
                future.exception()
        data = self._chunks.get(index)
        if data is None:
            future = self._pending.pop(index, None)
            if future is None:
                self._note(len(self._chunks) + len(self._pending) + 1)
                data = self._fetch(index)
            else:
                data = future.result()
            self._chunks[index] = data
        if sequential:
            for j in window:
                if j * self.chunk_size >= self.size or j in self._pending:
                    continue
                if len(self._chunks) + len(self._pending) >= 1 + self.read_ahead:
                    break
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.read_ahead, thread_name_prefix="s3-read-ahead")
                self._pending[j] = self._pool.submit(self._fetch, j)
                self._note(len(self._chunks) + len(self._pending))
        return data

    def _note(self, held: int) -> None:
        with self._counters:
            self.max_chunks_held = max(self.max_chunks_held, held)

    def _fetch(self, index: int) -> bytes:
        """Bytes of chunk ``index`` by one ranged GET, retried with backoff on transient failures."""
        start = index * self.chunk_size
        end = min(self.size, start + self.chunk_size) - 1
        for attempt in range(ATTEMPTS):
            try:
                with self._counters:
                    self.gets += 1
                resp = client().get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end}",
                                           IfMatch=f'"{self.etag}"')
                data = resp["Body"].read()
                if len(data) != end - start + 1:
                    raise _ShortRead(f"got {len(data)} of {end - start + 1} bytes")
                return data
            except (bex.ClientError, bex.BotoCoreError, *TRANSIENT, _ShortRead) as e:
                transient = isinstance(e, (*TRANSIENT, _ShortRead)) or error_code(e) in _RETRY_CODES
                if not transient:
                    raise map_error(e, self.uri) from e
                if attempt == ATTEMPTS - 1:
                    raise ClientError(f"reading {self.uri} (bytes {start}-{end}) failed {ATTEMPTS} times (last: "
                                      f"{e}); check the network and the endpoint, then run again") from e
                log.warning("reading %s (bytes %d-%d) failed (%s); retrying", self.uri, start, end, e)
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise AssertionError("not reached")


def open_ranged(uri: str, *, chunk_size: int = 8 * MIB, read_ahead: int = 2) -> S3RangedFile:
    """Open ``uri`` for reading in ranged GETs of ``chunk_size`` bytes, ``read_ahead`` chunks ahead when sequential.

    Raises:
        ClientError: a bad URI, a missing bucket or object, no access, an unreachable endpoint.
    """
    return S3RangedFile(uri, chunk_size=chunk_size, read_ahead=read_ahead)
