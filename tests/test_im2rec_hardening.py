"""Hostile use of ``openic im2rec``: two packers of one prefix, a full disk, decompression bombs, flags far out
of range. Each ends in one clean error line (or a Skip naming list file:line), and never in a corrupt .rec."""

import builtins
import io
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _shared import FullDisk
from PIL import Image

import openic.cli
from openic.errors import ClientError, DataError
from openic.formats import recordio
from openic.formats.lst import LstEntry, write_lst
from openic.formats.recordio import RecordReader
from openic.prep.im2rec import PackOptions, pack_lst
from openic.prep.im2rec_list import ListOptions, make_list


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(openic.cli, "_COMMAND_MODULES", ("openic.cli.im2rec",))
    return openic.cli.main


def _image(path: Path, h=8, w=8, value=0):
    rng = np.random.default_rng(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path, "JPEG")


def _folder(root: Path, n: int) -> Path:
    for i in range(n):
        _image(root / f"{i:04d}.jpg", value=i)
    return root


def _list(tmp_path, rows, name="set.lst"):
    write_lst(tmp_path / name, [LstEntry(i, (float(lab),), p) for i, lab, p in rows])
    return tmp_path / name


# --------------------------------------------------------------------------- 1. concurrent packers

_WAITING_CHILD = textwrap.dedent("""
    import os, sys, time
    from openic.cli import main
    go = sys.argv[1]
    while not os.path.exists(go):  # imports done: start the moment the test says so
        time.sleep(0.002)
    sys.exit(main(sys.argv[2:]))
""")


def _child(go: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WAITING_CHILD, str(go), "im2rec", "--quiet", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_packers_of_one_prefix_never_corrupt_the_rec(tmp_path):
    """B starts while A is writing (and asks for different records): B fails at once naming the .rec and A's PID,
    and the .rec is exactly what A alone writes."""
    root = _folder(tmp_path / "imgs", 150)
    out = tmp_path / "out"
    out.mkdir()
    make_list(out / "set", root, ListOptions(shuffle=False))
    pack_lst(out / "set.lst", root, tmp_path / "ref", PackOptions(resize=1024))  # slow enough to overlap
    a = _child(tmp_path / "go_a", "--resize", "1024", str(out / "set"), str(root))
    b = _child(tmp_path / "go_b", "--resize", "24", str(out / "set"), str(root))
    try:
        (tmp_path / "go_a").touch()
        deadline = time.monotonic() + 120
        while not any("partial" in n for n in os.listdir(out)) and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        (tmp_path / "go_b").touch()
        a_out, a_err = a.communicate(timeout=300)
        b_out, b_err = b.communicate(timeout=300)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    assert a.returncode == 0, a_err
    assert b.returncode == 2, (b_out, b_err)
    assert len(b_err.strip().splitlines()) == 1
    assert str(out / "set.rec") in b_err and f"PID {a.pid}" in b_err
    assert (out / "set.rec").read_bytes() == (tmp_path / "ref.rec").read_bytes()
    assert (out / "set.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()
    with RecordReader(out / "set.rec") as r:
        assert len(list(r)) == 150 == len(r.keys())
    assert sorted(os.listdir(out)) == ["set.idx", "set.lst", "set.rec"]


def test_two_threads_packing_two_lists_with_workers_each_write_their_own_images(tmp_path):
    """Each call hands its own job list to its forked workers (openic.forking), so two packs in one process at
    once cannot encode each other's images."""
    import threading

    lsts, refs = [], []
    for k, (h, w) in enumerate(((8, 8), (12, 20))):
        root = tmp_path / f"img{k}"
        for i in range(130):
            _image(root / f"{i:04d}.jpg", h=h, w=w, value=1000 * k + i)
        lsts.append(_list(tmp_path, [(i, i % 3, f"{i:04d}.jpg") for i in range(130)], name=f"set{k}.lst"))
        pack_lst(lsts[k], root, tmp_path / f"ref{k}", PackOptions(num_thread=1))
        refs.append((tmp_path / f"ref{k}.rec").read_bytes())
    start, errors = threading.Barrier(2), []

    def pack(k: int) -> None:
        try:
            start.wait()
            for round_ in range(8):  # many short packs, so the two threads' forks interleave
                out = tmp_path / f"out{k}_{round_}"
                pack_lst(lsts[k], tmp_path / f"img{k}", out, PackOptions(num_thread=2))
                assert out.with_suffix(".rec").read_bytes() == refs[k], (k, round_)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=pack, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --------------------------------------------------------------------------- 2. disk full


def test_disk_full_is_one_line_naming_the_rec_and_leaves_no_partial(tmp_path, monkeypatch, capsys, main):
    root = _folder(tmp_path / "imgs", 6)
    _list(tmp_path, [(i, 0, f"{i:04d}.jpg") for i in range(6)])
    monkeypatch.setattr(recordio, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k), 2000), raising=False)
    assert main(["im2rec", "--quiet", str(tmp_path / "set"), str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"openic im2rec: error: cannot write {tmp_path / 'set.rec'}: [Errno 28] No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["imgs", "set.lst"]


# --------------------------------------------------------------------------- 3. image size limit


def _bomb(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@pytest.mark.parametrize("pass_through", [False, True])
def test_bomb_is_a_skip_naming_list_line(tmp_path, pass_through):
    root = tmp_path / "imgs"
    _image(root / "ok.jpg")
    (root / "bomb.jpg").write_bytes(_bomb(65500, 65500))
    lst = _list(tmp_path, [(0, 0, "ok.jpg"), (1, 1, "bomb.jpg")])
    with pytest.raises(DataError, match=rf"{lst}:2: .*bomb.jpg: .*65500x65500.*--max-image-pixels"):
        pack_lst(lst, root, tmp_path / "out", PackOptions(pass_through=pass_through))
    res = pack_lst(lst, root, tmp_path / "out", PackOptions(pass_through=pass_through, skip_bad=True))
    assert res.written == 1 and res.skipped[0].source == f"{lst}:2"


def test_max_image_pixels_flag(tmp_path, capsys, main):
    root = tmp_path / "imgs"
    _image(root / "big.jpg", h=10, w=20)
    _image(root / "small.jpg", h=4, w=4)
    _list(tmp_path, [(0, 0, "big.jpg"), (1, 1, "small.jpg")])
    prefix = str(tmp_path / "set")
    assert main(["im2rec", "--quiet", "--max-image-pixels", "100", "--skip-bad", prefix, str(root)]) == 0
    assert "set.lst:1: skipping" in capsys.readouterr().err
    with RecordReader(tmp_path / "set.rec") as r:
        assert r.keys() == [1]
    with pytest.raises(SystemExit) as stop:  # argparse refuses it before any work
        main(["im2rec", "--quiet", "--max-image-pixels", "0", prefix, str(root)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "--max-image-pixels" in err.splitlines()[-1] and "got 0" in err
    with pytest.raises(ClientError, match=r"max_image_pixels .*1\.\.1099511627776, got 0"):  # the API, same rule
        PackOptions(max_image_pixels=0)


def test_resize_past_the_pixel_limit_is_a_skip_not_a_memory_error(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "a.jpg", h=4, w=8)
    lst = _list(tmp_path, [(0, 0, "a.jpg")])
    with pytest.raises(DataError, match=rf"{lst}:1: .*resiz.*40000x20000.*--max-image-pixels"):
        pack_lst(lst, root, tmp_path / "out", PackOptions(resize=20000))
    with pytest.raises(DataError, match=rf"{lst}:1: .*100000x200.*JPEG"):  # JPEG sides stop at 65535
        _image(root / "a.jpg", h=2, w=1000)
        pack_lst(lst, root, tmp_path / "out", PackOptions(resize=200))


# --------------------------------------------------------------------------- 5. integer flags


def test_chunks_beyond_the_image_count_are_refused(tmp_path, capsys, main):
    root = _folder(tmp_path / "imgs", 6)
    assert main(["im2rec", "--list", "--chunks", "100000", str(tmp_path / "p"), str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "100000" in err and "6 images" in err
    with pytest.raises(ClientError, match=r"chunks 5 .*6 images.*2 .*empty.*chunks 3"):
        make_list(tmp_path / "p", root, ListOptions(chunks=5))
    assert sorted(os.listdir(tmp_path)) == ["imgs"]
    assert len(make_list(tmp_path / "p", root, ListOptions(chunks=6)).lst_paths) == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize": -1}, "resize"),
        ({"resize": 65536}, r"resize .*65535"),
        ({"num_thread": 0}, "num_thread"),
        ({"num_thread": 100000}, r"num_thread .*256"),
        ({"max_image_pixels": 0}, "max_image_pixels"),
    ],
)
def test_pack_option_bounds(kwargs, match):
    with pytest.raises(ClientError, match=match):
        PackOptions(**kwargs)


def test_flags_out_of_range_are_one_line(tmp_path, capsys, main):
    root = _folder(tmp_path / "imgs", 2)
    _list(tmp_path, [(0, 0, "0000.jpg"), (1, 1, "0001.jpg")])
    for flag, value in (("--resize", "70000"), ("--num-thread", "100000")):
        assert main(["im2rec", flag, value, str(tmp_path / "set"), str(root)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and value in err
