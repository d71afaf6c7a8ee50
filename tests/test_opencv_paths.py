"""The OpenCV fast paths of image encode/resize and the numpy/Pillow reference give the same bytes as the OpenCV
of MXNet's own venv (``tests/data/opencv_goldens``, edge shapes included); a build that would differ is not used."""

import logging
from pathlib import Path

import numpy as np
import pytest

from openic.formats import images, opencv

GOLDENS = np.load(Path(__file__).parent / "data" / "opencv_goldens" / "goldens.npz")
COUNT = len([k for k in GOLDENS.files if k.endswith("_img")])
HAVE_CV2 = bool(opencv._module())


@pytest.fixture(params=[False, True], ids=["reference", "opencv"])
def path(request, monkeypatch):
    if request.param and not HAVE_CV2:
        pytest.skip("opencv-python is not installed (pip install 'openic[fast]')")
    monkeypatch.setattr(opencv, "_override", request.param)
    return request.param


def test_goldens_have_edge_shapes():
    shapes = [GOLDENS[f"{i}_img"].shape for i in range(COUNT)]
    assert COUNT >= 100 and any(s[0] == 1 for s in shapes) and any(s[1] == 1 for s in shapes)
    assert any(len(s) == 2 for s in shapes) and any(len(s) == 3 for s in shapes)


def test_encode_and_resize_match_mxnets_opencv(path):
    bad = []
    for i in range(COUNT):
        img = GOLDENS[f"{i}_img"]
        jq, pq, th, tw = (int(v) for v in GOLDENS[f"{i}_settings"])
        if images.encode_image(img, ".jpg", jq) != GOLDENS[f"{i}_jpg"].tobytes():
            bad.append((i, "jpg", img.shape, jq))
        if images.encode_image(img, ".png", pq) != GOLDENS[f"{i}_png"].tobytes():
            bad.append((i, "png", img.shape, pq))
        if not np.array_equal(images.resize_bilinear(img, th, tw), GOLDENS[f"{i}_resize"]):
            bad.append((i, "resize", img.shape, (th, tw)))
    assert not bad, bad[:10]


def test_one_row_png_uses_the_filters_libpng_allows():
    """libpng drops Up/Average/Paeth for a one-row image (the reference chose Average here before)."""
    row = np.random.default_rng(1).integers(0, 256, (1, 113, 3), dtype=np.uint8)
    import zlib

    data = images._encode_reference(row, ".png", 4)
    idat = data[data.index(b"IDAT") + 4:]
    assert zlib.decompressobj().decompress(idat)[0] in (0, 1)


@pytest.mark.skipif(not HAVE_CV2, reason="opencv-python is not installed")
def test_a_build_that_differs_is_not_used(monkeypatch, caplog):
    monkeypatch.setattr(opencv, "_state", {})
    monkeypatch.setattr(opencv, "_override", None)
    monkeypatch.setattr(opencv, "_encode", lambda arr, enc, q: b"other bytes")
    with caplog.at_level(logging.INFO, logger="openic.formats.opencv"):
        img = GOLDENS["3_img"]
        assert images.encode_image(img, ".jpg", 90) == images._encode_reference(np.ascontiguousarray(img), ".jpg", 90)
    assert opencv._state["jpeg"] is False and "using the reference" in caplog.text


@pytest.mark.skipif(not HAVE_CV2, reason="opencv-python is not installed")
def test_environment_turns_it_off(monkeypatch):
    monkeypatch.setattr(opencv, "_override", None)
    monkeypatch.setenv("OPENIC_OPENCV", "0")
    called = []
    monkeypatch.setattr(opencv, "_resize", lambda *a: called.append(a))
    images.resize_bilinear(GOLDENS["5_img"], 7, 9)
    assert not called
    monkeypatch.delenv("OPENIC_OPENCV")
    assert opencv.usable("resize", images._resize_reference)
