"""A bounded load test on loopback: 10,000 requests at concurrency 64 against a real server; SIGTERM under load."""

from __future__ import annotations

import signal
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import image, jpeg, make_artifact, npy, post, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from loadgen import run_load  # noqa: E402

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric(url: str, prefix: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("load"))


def test_ten_thousand_requests_at_concurrency_64(artifact, capsys):
    proc, url = start_server(artifact, "--max-batch", "32")
    try:
        warm = run_load(url, jpeg(), "image/jpeg", requests=200, concurrency=8)
        assert warm.count(lambda s: s == 200) == 200, warm.errors
        before = rss_mb(proc.pid)
        result = run_load(url, jpeg(), "image/jpeg", requests=10_000, concurrency=64)
        after = rss_mb(proc.pid)
        assert not result.errors, result.errors[:5]
        assert len(result.statuses) == 10_000
        assert result.count(lambda s: s >= 500) == 0
        assert result.count(lambda s: s == 200) == 10_000
        assert metric(url, 'openic_requests_total{route="invocations",status="200"}') == 10_200
        # dynamic batching formed batches larger than one under this load
        batches = metric(url, "openic_batch_size_count")
        assert batches < 10_200 / 2, f"{batches} forward passes for 10,200 images: no batching under load"
        assert after - before < 256, f"server RSS grew from {before:.0f} MB to {after:.0f} MB"
        with capsys.disabled():
            print(f"\nload: 10,000 requests at c=64 in {result.seconds:.1f}s ({result.requests_per_s:.0f} req/s), "
                  f"p50 {result.percentile(0.5) * 1e3:.1f} ms, p99 {result.percentile(0.99) * 1e3:.1f} ms, "
                  f"{10_200 / batches:.1f} images per forward, RSS {before:.0f} -> {after:.0f} MB")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_sigterm_answers_every_request_in_flight(artifact):
    proc, url = start_server(artifact, "--max-batch", "8", "--max-queue", "8192")  # room for all 24 x 256
    body = npy(np.stack([image(16, 16, seed=i) for i in range(256)]))  # 32 forward passes per request
    try:
        finished: list[float] = []
        first = threading.Event()

        def one(_: int) -> int:
            status = post(url + "/invocations", body, "application/x-npy", timeout=120)[0]
            finished.append(time.monotonic())
            first.set()
            return status

        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            assert first.wait(120), "no request was answered"
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # the other requests are still being answered
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 24
        assert sum(t > signalled for t in finished) >= 12, "most requests ended before SIGTERM: not a test"
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
