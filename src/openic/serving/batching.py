"""Dynamic batching: concurrent requests in one process are run as one forward pass.

A request's images join a bounded queue; one consumer task takes the first waiting request, then whatever else
arrives within ``max_wait_ms`` (up to ``max_batch`` images), runs the model once in the process's torch thread
(torch and ONNX Runtime release the GIL, so the event loop keeps accepting), and hands each request its rows.
A full queue is refused at once (503) rather than growing without bound.

A backend that runs only some batch sizes (``--compile``'s buckets, padding the rest with blank images) names
them in ``sizes``; a batch that falls between two is cut to the lower one, and the requests cut off go first in
the next pass. At concurrency 32 the server formed batches of ~22 that ran padded to 32, a third of the forward
pass spent on padding (``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from openic.serving.handler import RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """How requests are grouped: at most ``max_batch`` images, waiting at most ``max_wait_ms`` for company, with at
    most ``max_queue`` images waiting."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1024:
            raise ValueError(f"max_batch must be 1..1024, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be 0..10000, got {self.max_wait_ms}")
        if not 1 <= self.max_queue <= 1_000_000:
            raise ValueError(f"max_queue must be 1..1000000, got {self.max_queue}")


_TORCH_THREAD: ThreadPoolExecutor | None = None


def torch_thread() -> ThreadPoolExecutor:
    """The one thread of a serving process that runs torch: loading, preprocessing, forward passes.

    Each thread that runs torch's intra-op (OpenMP) work gets its own thread team, and once two teams exist they
    slow each other down: ResNet-18 at batch 1 went from 8 to 14 ms per call on 2 cores, in whichever thread ran it
    (``bench/RESULTS.md``). ONNX Runtime has its own pool; the torch-free decoding may run anywhere.
    """
    global _TORCH_THREAD
    if _TORCH_THREAD is None:
        _TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openic-torch")
    return _TORCH_THREAD


@dataclass
class _Job:
    images: torch.Tensor  # uint8 [n, C, H, W]
    future: asyncio.Future


class Batcher:
    """Groups ``submit`` calls into forward passes of ``predict`` (uint8 ``[N, C, H, W]`` -> ``[N, K]``)."""

    def __init__(self, predict: Callable[[torch.Tensor], np.ndarray], options: BatchOptions,
                 on_batch: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None,
                 sizes: Sequence[int] = ()) -> None:
        self.predict, self.options = predict, options
        self.sizes = sorted(set(sizes))  # batch sizes the backend runs without padding; empty: any size
        self.on_batch, self.on_depth = on_batch or (lambda n: None), on_depth or (lambda n: None)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._running = False  # a forward pass is under way (stop waits for it)
        self._waiting = 0  # images queued, not yet taken into a batch
        self._incoming = 0  # requests being read or decoded: worth waiting for, up to max_wait_ms
        self._executor = torch_thread()
        self._task: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the recent forward passes (the last 1000), for tests and logs

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop (SIGTERM: in-flight requests are answered)."""
        while not self._queue.empty() or self._running:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request on its way to :meth:`submit`. A batch waits for more only while some are: a lone
        request (concurrency 1) runs at once instead of paying ``max_wait_ms`` for company that is not coming."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, images: torch.Tensor) -> np.ndarray:
        n = int(images.shape[0])
        if self._waiting + n > self.options.max_queue:
            raise RequestError(503, f"the server is busy: {self._waiting} images are queued (limit "
                                    f"{self.options.max_queue}); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._waiting += n
        self.on_depth(self._waiting)
        self._queue.put_nowait(_Job(images, future))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            count = int(jobs[0].images.shape[0])
            deadline = time.perf_counter() + self.options.max_wait_ms / 1000
            while count < self.options.max_batch:
                if self._queue.empty():
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._incoming == 0:
                        break
                    self._arrived.clear()  # waiting on an Event, not on Queue.get: a timeout then loses nothing
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), left)
                    continue
                job = self._queue.get_nowait()
                if count + int(job.images.shape[0]) > self.options.max_batch:
                    self._queue_front(job)
                    break
                jobs.append(job)
                count += int(job.images.shape[0])
            jobs, count = self._fit(jobs, count)
            self._waiting -= count
            self.on_depth(self._waiting)
            self._running = True
            try:
                await self._forward(loop, jobs, count)
            finally:
                self._running = False

    def _fit(self, jobs: list[_Job], count: int) -> tuple[list[_Job], int]:
        """Cut a batch between two of ``sizes`` down to the lower one (never below its first request): the
        requests cut off run first in the next pass, instead of the backend computing padding in their place."""
        target = max((s for s in self.sizes if s <= count), default=count)
        cut: list[_Job] = []
        while len(jobs) > 1 and count > target:
            cut.append(jobs.pop())
            count -= int(cut[-1].images.shape[0])
        if cut:
            self._queue_front(*reversed(cut))
        return jobs, count

    def _queue_front(self, *jobs: _Job) -> None:
        """Put back jobs that did not fit, in order, ahead of the others (asyncio.Queue has no push-front)."""
        rest = list(jobs)
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for j in rest:
            self._queue.put_nowait(j)

    async def _forward(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], count: int) -> None:
        batch = jobs[0].images if len(jobs) == 1 else torch.cat([j.images for j in jobs])
        try:
            probs = await loop.run_in_executor(self._executor, self.predict, batch)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            log.exception("forward pass of %d images failed", count)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.batches = [*self.batches[-999:], count]
        self.on_batch(count)
        start = 0
        for j in jobs:
            n = int(j.images.shape[0])
            if not j.future.done():  # the client may have gone away
                j.future.set_result(probs[start:start + n])
            start += n
