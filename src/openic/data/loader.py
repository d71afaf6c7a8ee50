"""Batches of uint8 images for training and validation.

Two paths, chosen per channel and logged:
- **in-memory** (small data sets, every image the same size after ``resize``): each image is decoded once into one
  uint8 tensor ``[N, C, h, w]``; every epoch is then pure tensor work — a permutation, batched augmentation on whole
  batches, done in a background thread while the model trains. This is what beats MXNet's C++ iterator.
- **streaming** (large or mixed-size data): a ``DataLoader`` whose workers read, decode, resize and crop each
  image; the photometric part of the augmentation then runs per batch.
Batches stay uint8 until they reach the device, where ``to_float_input`` converts them (raw 0..255 pixels: the
network's first layer is a BatchNorm). An epoch's last training batch is smaller when the data does not divide
evenly: MXNet's ``round_batch`` fills it by borrowing the next epoch's first images instead, which costs the same
work per image; openic keeps epochs self-contained so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from openic.data.sources import Source
from openic.data.transforms import Augmenter, resize_shorter
from openic.errors import ClientError, DataError
from openic.forking import inherited, lookup
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS, decode_image

log = logging.getLogger(__name__)



def decode_one(source: Source, i: int, channels: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode image ``i`` to a ``[C, h, w]`` uint8 tensor; errors name the file and record."""
    try:
        array = decode_image(source.read(i), channels=channels, max_pixels=max_pixels)
    except DataError as e:
        raise DataError(f"{source.describe(i)}: {e}") from None
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return torch.from_numpy(array).permute(2, 0, 1)


@dataclass
class Cached:
    """A data set decoded into memory, and its smallest original image size (for the size check)."""

    images: torch.Tensor  # [N, C, h, w] uint8, after ``resize``
    min_hw: tuple[int, int]  # smallest height and width before ``resize``


def cache_images(source: Source, channels: int, resize: int | None, limit_mb: int,
                 progress: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 workers: int = 1) -> Cached | None:
    """Decode every image into one ``[N, C, h, w]`` tensor, or ``None`` if sizes differ or it would not fit.

    With ``workers > 1`` (and ``fork``), forked processes decode disjoint ranges straight into the tensor's shared
    memory: per-image Python work keeps threads from scaling. A bad image raises as it would alone, the first in
    record order.
    """
    first = decode_one(source, 0, channels, max_pixels)
    min_hw = tuple(first.shape[1:])
    if resize is not None:
        first = resize_shorter(first[None], resize)[0]
    n = len(source)
    need_mb = n * first.numel() / 2**20
    if need_mb > limit_mb:
        log.info("Streaming images from disk: %.0f MB decoded exceeds the %d MB in-memory limit (--cache-mb)",
                 need_mb, limit_mb)
        return None
    size = 512
    ranges = [(a, min(a + size, n)) for a in range(1, n, size)]
    parallel = workers > 1 and len(ranges) > 1 and "fork" in multiprocessing.get_all_start_methods()
    out = torch.empty((n, *first.shape), dtype=torch.uint8)
    if parallel:
        parallel = _share(out)
    out[0] = first
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="decoding", unit="img", leave=False, initial=1, total=n)
    try:
        results = _decode_ranges(ranges, (source, out, channels, resize, max_pixels), workers if parallel else 1, bar)
    finally:
        if bar is not None:
            bar.close()
    for range_min, other in results:
        if other is not None:
            i, shape = other
            log.info("Streaming images from disk: %s has shape %s, the first image %s (sizes differ)",
                     source.describe(i), shape, tuple(first.shape))
            return None
        min_hw = (min(min_hw[0], range_min[0]), min(min_hw[1], range_min[1]))
    return Cached(out, (int(min_hw[0]), int(min_hw[1])))


def _share(out: torch.Tensor) -> bool:
    """Move ``out`` into shared memory for the decoding processes; False (decode in this process) where the
    shared-memory file system is too small for it, as in a container with Docker's default 64 MB /dev/shm."""
    need = out.numel() * out.element_size()
    try:
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None
        if free is not None and need > free * 0.9:
            raise RuntimeError(f"/dev/shm has {free / 2**20:.0f} MB free")
        out.share_memory_()
    except (OSError, RuntimeError) as e:
        log.info("Decoding in one process: %.0f MB of shared memory are not available (%s)", need / 2**20, e)
        return False
    return True


_RangeResult = tuple[tuple[int, int], "tuple[int, tuple[int, ...]] | None"]


def _forked_range(token: int, span: tuple[int, int]) -> _RangeResult:
    torch.set_num_threads(1)  # a forked child must not start an OpenMP pool of its own
    job: tuple = lookup(token)  # type: ignore[assignment] - the source, the shared tensor, the options
    return _decode_range(job[0], span, *job[1:])


def _decode_ranges(ranges: list[tuple[int, int]], job: tuple, workers: int, bar: object) -> list[_RangeResult]:
    """Each range decoded in order, in this process or in ``workers`` forked ones."""
    if workers == 1:
        results = []
        for span in ranges:
            results.append(_decode_range(job[0], span, *job[1:]))
            if bar is not None:
                bar.update(span[1] - span[0])
        return results
    with inherited(job) as token, ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_forked_range, token, span) for span in ranges]
        results = []
        for span, fut in zip(ranges, futures, strict=True):
            results.append(fut.result())  # in order: the first bad range raises first
            if bar is not None:
                bar.update(span[1] - span[0])
        return results


def _decode_range(source: Source, span: tuple[int, int], out: torch.Tensor, channels: int, resize: int | None,
                  max_pixels: int) -> _RangeResult:
    """Decode ``span`` into ``out``: (smallest h, w before resize, and the first image of another shape or None)."""
    min_h = min_w = 1 << 30
    for i in range(*span):
        img = decode_one(source, i, channels, max_pixels)
        min_h, min_w = min(min_h, img.shape[1]), min(min_w, img.shape[2])
        if resize is not None:
            img = resize_shorter(img[None], resize)[0]
        if img.shape != out.shape[1:]:
            return (min_h, min_w), (i, tuple(img.shape))
        out[i] = img
    return (min_h, min_w), None


class _Failure(NamedTuple):
    """An error inside a DataLoader worker, carried back as data so the user sees one clean line."""

    not_found: bool
    message: str


class _Batch(NamedTuple):
    """A whole batch built in the worker (same-size images: stacked, then one geometry pass)."""

    images: torch.Tensor
    labels: torch.Tensor


def _collate(items: list) -> object:
    for item in items:
        if isinstance(item, (_Failure, _Batch)):
            return item if isinstance(item, _Failure) else (item.images, item.labels)
    return default_collate(items)


class _StreamDataset(Dataset):
    """Decoded, resized, cropped images: a batch at a time where they share one size, else one per item
    (photometric work is done per batch in the main process)."""

    def __init__(self, source: Source, augmenter: Augmenter, channels: int, train: bool, seed: int,
                 max_pixels: int) -> None:
        self.source, self.augmenter, self.channels, self.train, self.seed = source, augmenter, channels, train, seed
        self.max_pixels = max_pixels
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
        try:
            img = decode_one(self.source, i, self.channels, self.max_pixels)[None]
        except (ClientError, OSError) as e:  # already names the file and record
            return _Failure(isinstance(e, FileNotFoundError), str(e))
        return self._finish(i, img)

    def __getitems__(self, indices: list[int]) -> list:
        """One batch (DataLoader calls this with the batch's indices): images of one size are stacked and get one
        geometry pass, drawn from a generator seeded by the batch, ~20x cheaper than per image; a batch of mixed
        sizes goes image by image as :meth:`__getitem__`."""
        images = []
        for i in indices:
            try:
                images.append(decode_one(self.source, i, self.channels, self.max_pixels))
            except (ClientError, OSError) as e:
                return [_Failure(isinstance(e, FileNotFoundError), str(e))]
        if len({img.shape for img in images}) != 1:
            return [self._finish(i, img[None]) for i, img in zip(indices, images, strict=True)]
        x = torch.stack(images)
        try:
            if self.train:
                seed = hash((self.seed, self.epoch, indices[0], len(indices))) & 0x7FFFFFFF
                x = self.augmenter.train_geometry(x, torch.Generator().manual_seed(seed))
            else:
                x = self.augmenter.eval_batch(x)
        except ClientError as e:  # the images share one size, so the first one names the problem
            return [_Failure(False, f"{self.source.describe(indices[0])}: {e}")]
        return [_Batch(x, torch.from_numpy(self.source.labels[indices]))]

    def _finish(self, i: int, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
        try:
            if self.train:
                gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
                img = self.augmenter.train_geometry(img, gen)
            else:
                img = self.augmenter.eval_batch(img)
        except ClientError as e:
            return _Failure(False, f"{self.source.describe(i)}: {e}")
        return img[0], torch.from_numpy(self.source.labels[i])


@dataclass
class BatchStream:
    """An epoch's worth of ``(uint8 images [B, C, H, W], float labels [B, L])`` batches."""

    source: Source
    augmenter: Augmenter
    batch_size: int
    train: bool
    seed: int
    images: torch.Tensor | None = None  # the in-memory path when set
    workers: int = 0
    prefetch: bool = False  # build in-memory batches in a background thread (pays off when a GPU trains)
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # refuse images declaring more pixels, before decoding
    rank: int = 0  # this process's shard of every epoch (distributed training) ...
    world_size: int = 1  # ... out of this many
    per_rank: int | None = None  # training images per rank and epoch when ranks hold different data (sharded)

    def __post_init__(self) -> None:
        self.labels = torch.from_numpy(self.source.labels)
        self.epoch = 0
        self._stream: _StreamDataset | None = None
        if self.images is None:
            channels = self.augmenter.image_shape[0]
            self._stream = _StreamDataset(self.source, self.augmenter, channels, self.train, self.seed,
                                          self.max_pixels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._stream is not None:
            self._stream.epoch = epoch

    def _order(self) -> torch.Tensor:
        """This rank's images for the epoch, in order.

        Training: one permutation drawn alike on every rank, padded by repeating its start to a multiple of the
        world size (as ``DistributedSampler`` pads), then dealt round-robin, so every rank runs the same number
        of batches (unequal counts would hang DDP). With ``per_rank`` (a ShardedByS3Key channel: each host holds
        different images) the rank's own deal is cycled to that common length instead. Validation: dealt without
        padding, each image counted once.
        """
        n = len(self.source)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch))
        if self.per_rank is not None:
            mine = order[self.rank :: self.world_size]
            order = mine.repeat(-(-self.per_rank // len(mine)))[: self.per_rank]
        elif self.world_size > 1:
            padded = -(-n // self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - n]])[self.rank :: self.world_size]
        if len(order) % self.batch_size == 1:  # BatchNorm needs 2+ images in a training batch
            order = torch.cat([order, order[:1]])
        return order

    def __len__(self) -> int:
        """Batches per epoch on this rank, from the counts alone (no permutation drawn)."""
        n = len(self.source)
        if not self.train:
            n = len(range(self.rank, n, self.world_size))
        else:
            n = self.per_rank if self.per_rank is not None else -(-n // self.world_size)
            n += 1 if n % self.batch_size == 1 else 0
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        if self.images is not None:
            batches = self._cached_batches(order)
            return _prefetch(batches) if self.prefetch else batches
        return self._streamed_batches(order)

    def _augment_seed(self) -> int:
        """Random crops and flips differ by epoch and by rank (rank 0's are those of a single process)."""
        return self.seed * 7919 + self.epoch + self.rank * 104729

    def _cached_batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self._augment_seed())
        assert self.images is not None
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            x = self.augmenter.train_batch(x, gen) if self.train else self.augmenter.eval_batch(x)
            yield x.contiguous(), self.labels[idx]

    def _streamed_batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self._stream is not None
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        loader = DataLoader(self._stream, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
                            worker_init_fn=_one_thread, pin_memory=torch.cuda.is_available())
        gen = torch.Generator().manual_seed(self._augment_seed())
        for batch in loader:
            if isinstance(batch, _Failure):
                raise (FileNotFoundError if batch.not_found else DataError)(batch.message)
            x, y = batch
            yield (self.augmenter.train_photometric(x, gen) if self.train else x), y


def _one_thread(_worker_id: int) -> None:
    """Decoding workers run one torch thread each, so N workers do not oversubscribe the training process's cores."""
    torch.set_num_threads(1)


def _prefetch(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], depth: int = 2,
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run the batch producer in a thread (torch ops release the GIL), ``depth`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
            q.put(e)
            return
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True, name="openic-batches")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the producer can see `stop`
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
