"""A small closed-loop HTTP/1.1 load generator on asyncio streams, for bench/serve.py and the serving load test.

Each of ``concurrency`` clients holds one keep-alive connection and sends its next request as soon as the answer
to the previous one is read, so the offered load is exactly ``concurrency`` requests in flight. A raw stream
client (not an HTTP library) keeps the generator's own cost per request small: it shares the CPU with the server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """Per-request status codes and latencies of one run, and its wall time."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.statuses) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-quantile latency in seconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def count(self, predicate) -> int:
        return sum(1 for s in self.statuses if predicate(s))


def _request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n")
    return head.encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status code and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def _client(host: str, port: int, raw: bytes, todo: list[int], result: LoadResult) -> None:
    reader = writer = None
    while todo:
        todo.pop()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            tic = time.perf_counter()
            writer.write(raw)
            await writer.drain()
            status, keep = await _read_answer(reader)
            result.latencies.append(time.perf_counter() - tic)
            result.statuses.append(status)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            result.errors.append(f"{type(e).__name__}: {e}")
            keep = False
        if not keep and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(host: str, port: int, raw: bytes, requests: int, concurrency: int) -> LoadResult:
    result = LoadResult()
    todo = list(range(requests))
    tic = time.perf_counter()
    await asyncio.gather(*(_client(host, port, raw, todo, result) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - tic
    return result


def run_load(url: str, body: bytes, content_type: str, *, requests: int, concurrency: int,
             path: str = "/invocations") -> LoadResult:
    """Send ``requests`` POSTs of ``body`` to ``url + path`` with ``concurrency`` in flight; blocks until done."""
    if not 1 <= concurrency <= 4096 or not 1 <= requests <= 10_000_000:
        raise ValueError(f"concurrency {concurrency} must be in 1..4096 and requests {requests} in 1..10^7")
    hostport = url.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    raw = _request(host, int(port), path, body, content_type)
    return asyncio.run(_run(host, int(port), raw, requests, concurrency))
