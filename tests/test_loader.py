"""The input pipeline's fast paths give exactly the slow paths' data: the in-memory cache decoded by forked
workers equals the one-process decode, and cached batches equal streamed batches for the same seed."""

import logging
import threading

import numpy as np
import pytest
import torch

from openic.data.loader import BatchStream, cache_images
from openic.data.sources import RecordSource
from openic.data.transforms import Augmenter
from openic.formats.images import encode_image
from openic.formats.recordio import IRHeader, RecordWriter, pack


def _rec(path, n, sizes=((20, 24),), channels=3):
    rng = np.random.default_rng(0)
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for i in range(n):
            h, wd = sizes[i % len(sizes)]
            img = rng.integers(0, 256, (h, wd, channels) if channels == 3 else (h, wd), dtype=np.uint8)
            w.write(pack(IRHeader(0, float(i % 4), i, 0), encode_image(img, ".jpg" if i % 3 else ".png")), key=i)
    return path


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return _rec(tmp_path_factory.mktemp("loader") / "a.rec", 1300)


@pytest.mark.parametrize("resize", [None, 16])
def test_forked_decode_equals_one_process(rec, resize):
    one = cache_images(RecordSource([rec]), 3, resize, 4096, workers=1)
    many = cache_images(RecordSource([rec]), 3, resize, 4096, workers=3)
    assert torch.equal(one.images, many.images) and one.min_hw == many.min_hw == (20, 24)
    assert one.images.shape == ((1300, 3, 16, 19) if resize else (1300, 3, 20, 24))


def test_differing_sizes_fall_back_to_streaming_in_both(tmp_path, caplog):
    path = _rec(tmp_path / "mixed.rec", 1100, sizes=((20, 24),) * 900 + ((22, 24),))
    with caplog.at_level(logging.INFO):
        for workers in (1, 2):
            assert cache_images(RecordSource([path]), 3, None, 4096, workers=workers) is None
    assert caplog.text.count("(record 900 at offset") == 2  # the first odd image, named the same both ways


def test_a_corrupt_image_is_named_by_the_forked_decode(tmp_path):
    path = _rec(tmp_path / "bad.rec", 1100)
    data = bytearray(path.read_bytes())
    source = RecordSource([path])
    _, offset = source.locations[1000]
    data[offset + 40: offset + 200] = b"\x00" * 160  # inside the image bytes of record 1000
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"record 1000 at offset"):
        cache_images(RecordSource([path]), 3, None, 4096, workers=2)


@pytest.mark.parametrize("train", [True, False])
def test_cached_and_streamed_batches_are_the_same(rec, train):
    """Same seed, same order, labels and pixels (no random augmentation: the in-memory path draws crops per batch,
    the streaming one per image, so with augmentation_type set the crops are alike in law, not equal)."""
    source = RecordSource([rec])
    images = cache_images(source, 3, None, 4096, workers=2).images
    aug = Augmenter(None, (3, 16, 16), None)
    cached = BatchStream(source, aug, 64, train, seed=5, images=images)
    streamed = BatchStream(source, aug, 64, train, seed=5, workers=2)
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        streamed.set_epoch(epoch)
        pairs = list(zip(cached, streamed, strict=True))
        assert len(pairs) == len(cached) > 10
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmented_batches_keep_order_and_labels(rec):
    source = RecordSource([rec])
    aug = Augmenter("crop", (3, 16, 16), None)
    cached = BatchStream(source, aug, 64, True, seed=5, images=cache_images(source, 3, None, 4096).images)
    streamed = BatchStream(source, aug, 64, True, seed=5, workers=0)
    for (xa, ya), (xb, yb) in zip(cached, streamed, strict=True):
        assert torch.equal(ya, yb) and xa.shape == xb.shape == (len(ya), 3, 16, 16)


def test_too_little_shared_memory_decodes_in_one_process(rec, monkeypatch, caplog):
    import openic.data.loader as loader

    monkeypatch.setattr(loader.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with caplog.at_level(logging.INFO):
        got = cache_images(RecordSource([rec]), 3, None, 4096, workers=2)
    assert "Decoding in one process" in caplog.text
    assert torch.equal(got.images, cache_images(RecordSource([rec]), 3, None, 4096, workers=1).images)


def test_streamed_batches_do_not_depend_on_the_worker_count(tmp_path):
    mixed = _rec(tmp_path / "mixed.rec", 200, sizes=((20, 24),) * 150 + ((30, 24),) * 50)  # some batches mixed
    source = RecordSource([mixed])
    aug = Augmenter("crop", (3, 16, 16), None)
    runs = []
    for workers in (0, 2):
        stream = BatchStream(source, aug, 32, True, seed=9, workers=workers)
        stream.set_epoch(1)
        runs.append(list(stream))
    assert len(runs[0]) == len(runs[1]) == 7
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[1:] == (3, 16, 16)


def test_a_bad_image_in_a_streamed_batch_is_named(tmp_path):
    path = _rec(tmp_path / "bad.rec", 64)
    data = bytearray(path.read_bytes())
    _, offset = RecordSource([path]).locations[40]
    data[offset + 40: offset + 200] = b"\x00" * 160
    path.write_bytes(bytes(data))
    stream = BatchStream(RecordSource([path]), Augmenter("crop", (3, 16, 16), None), 16, True, seed=1, workers=0)
    with pytest.raises(Exception, match=r"record 40 at offset"):
        list(stream)


def test_two_threads_caching_two_data_sets_at_once_each_get_their_own_images(tmp_path):
    recs = [_rec(tmp_path / "a.rec", 1100, sizes=((20, 24),)), _rec(tmp_path / "b.rec", 1100, sizes=((12, 16),))]
    want = [cache_images(RecordSource([r]), 3, None, 4096, workers=1).images for r in recs]
    got: dict[int, torch.Tensor] = {}
    start = threading.Barrier(2)

    def build(i: int) -> None:
        start.wait()
        for _ in range(3):  # several rounds, so the two calls' forks interleave
            got[i] = cache_images(RecordSource([recs[i]]), 3, None, 4096, workers=2).images
            assert torch.equal(got[i], want[i])

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(2))
