"""Hostile inputs to the file formats: full disks, two writers of one .rec, decompression bombs, labels that
overflow a float or nest past Python's recursion limit, label widths that differ. Each must end in one
ClientError/DataError naming the file (and record or line), never a traceback or a silent fallback."""

import builtins
import errno
import inspect
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from _shared import FullDisk
from PIL import Image

import openic.cli
from openic import fileio
from openic.data.sources import Channel, open_channel
from openic.errors import ClientError, DataError
from openic.formats import images, recordio
from openic.formats.images import decode_image
from openic.formats.lst import parse_number, read_lst
from openic.formats.manifest import read_manifest
from openic.formats.recordio import IRHeader, RecordReader, RecordWriter, pack


@pytest.fixture
def main(monkeypatch):
    """``openic.cli.main`` with only ``rec`` registered, so other commands' imports cannot interfere."""
    monkeypatch.setattr(openic.cli, "_COMMAND_MODULES", ("openic.cli.rec",))
    return openic.cli.main


def _jpeg(w=16, h=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _jpeg_declaring(w: int, h: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 header is patched to declare ``w`` x ``h``."""
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _sof_only(w: int, h: int) -> bytes:
    """SOI + a bare SOF0 segment: the smallest 'JPEG' that declares a size."""
    return b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])


def _png_declaring(w: int, h: int) -> bytes:
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- 1. two writers of one .rec


def test_second_writer_of_a_rec_fails_at_once_naming_file_and_pid(tmp_path):
    rec = tmp_path / "a.rec"
    first = RecordWriter(rec, rec.with_suffix(".idx"))
    first.write(b"first")
    with pytest.raises(ClientError) as info:
        RecordWriter(rec, rec.with_suffix(".idx"))
    assert str(rec) in str(info.value) and f"PID {os.getpid()}" in str(info.value)
    first.close()
    with RecordReader(rec) as r:
        assert list(r) == [b"first"] and r.keys() == [0]
    with RecordWriter(rec) as again:  # the lock goes with the writer
        again.write(b"second")
    assert sorted(os.listdir(tmp_path)) == ["a.idx", "a.rec"]  # no lock or partial files left


def test_writer_in_another_process_is_refused(tmp_path):
    rec = tmp_path / "a.rec"
    child = textwrap.dedent(f"""
        import sys
        from openic.errors import ClientError
        from openic.formats.recordio import RecordWriter
        try:
            RecordWriter({str(rec)!r})
        except ClientError as e:
            print(e)
            sys.exit(3)
    """)
    with RecordWriter(rec) as w:
        w.write(b"x")
        proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert str(rec) in proc.stdout and f"PID {os.getpid()}" in proc.stdout


def test_partial_names_are_per_process_and_stale_ones_are_removed(tmp_path):
    rec = tmp_path / "a.rec"
    stale = tmp_path / ".a.rec.partial-999999"  # as a writer killed with SIGKILL leaves it
    stale.write_bytes(b"junk")
    w = RecordWriter(rec)
    w.write(b"x")
    assert (tmp_path / f".a.rec.partial-{os.getpid()}").is_file() and not (tmp_path / "a.rec.partial").exists()
    w.close()
    assert sorted(os.listdir(tmp_path)) == ["a.rec"]


# --------------------------------------------------------------------------- 2. disk full


@pytest.mark.parametrize("budget", [10, 10**6], ids=["write-fails", "close-fails"])
def test_disk_full_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, budget):
    monkeypatch.setattr(recordio, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k), budget), raising=False)
    rec = tmp_path / "a.rec"
    with pytest.raises(ClientError) as info, RecordWriter(rec, rec.with_suffix(".idx")) as w:
        w.write(b"x" * 100)
        w.write(b"y" * 100)
    assert str(info.value).startswith(f"cannot write {rec}: [Errno 28] No space left on device")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- 3. decompression bombs


def test_decode_refuses_huge_declared_jpeg_before_decoding():
    for data in (_sof_only(65500, 65500), _jpeg_declaring(65500, 65500)):
        with pytest.raises(images.ImageTooLargeError, match=r"65500x65500") as info:
            decode_image(data)
        assert f"{images.DEFAULT_MAX_IMAGE_PIXELS:,}" in str(info.value) and "--max-image-pixels" in str(info.value)


def test_huge_jpeg_costs_no_memory():
    """Under a 2 GiB address-space limit: a decoder that allocated the declared 12 GiB would die here."""
    child = textwrap.dedent(f"""
        import resource, struct, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from openic.formats.images import ImageTooLargeError, decode_image
        data = bytes.fromhex({_jpeg_declaring(65500, 65500).hex()!r})
        try:
            decode_image(data)
        except ImageTooLargeError:
            sys.exit(0)
        sys.exit(4)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_png_and_custom_limits():
    with pytest.raises(images.ImageTooLargeError, match=r"65500x65500"):
        decode_image(_png_declaring(65500, 65500))
    small = _jpeg(16, 8)
    with pytest.raises(images.ImageTooLargeError, match=r"16x8 .*limit of 100\b"):
        decode_image(small, max_pixels=100)
    assert decode_image(small, max_pixels=128).shape == (8, 16, 3)
    assert decode_image(small, max_pixels=None).shape == (8, 16, 3)
    buf = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buf, "PNG")
    with pytest.raises(images.ImageTooLargeError, match=r"20x10"):
        decode_image(buf.getvalue(), max_pixels=199)
    assert images.declared_size(buf.getvalue()) == (20, 10)
    assert images.declared_size(small) == (16, 8)
    with pytest.raises(ClientError, match="max_pixels"):
        decode_image(small, max_pixels=0)


def _bomb_rec(tmp_path, payload):
    rec = tmp_path / "bomb.rec"
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        w.write(pack(IRHeader(0, 1.0, 7, 0), _jpeg(8, 8)), key=7)
        w.write(pack(IRHeader(0, 1.0, 9, 0), payload), key=9)
    return rec


def test_rec_inspect_decode_refuses_bomb_in_one_line(tmp_path, capsys, main):
    rec = _bomb_rec(tmp_path, _sof_only(65500, 65500))
    assert main(["rec", "inspect", str(rec), "--decode"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(rec) in err and "key 9" in err and "offset" in err and "65500x65500" in err
    assert "--max-image-pixels" in err


def test_rec_inspect_max_image_pixels_flag(tmp_path, capsys, main):
    rec = _bomb_rec(tmp_path, _jpeg(20, 10))
    assert main(["rec", "inspect", str(rec), "--decode", "--max-image-pixels", "199"]) == 2
    assert "20x10" in capsys.readouterr().err
    assert main(["rec", "inspect", str(rec), "--decode", "--max-image-pixels", "256"]) == 0
    shapes = [json.loads(line)["shape"] for line in capsys.readouterr().out.splitlines()]
    assert shapes == [[8, 8, 3], [10, 20, 3]]
    for bad in ("0", str(2**40 + 1), "many"):  # refused by argparse: usage plus one error line, exit 2
        with pytest.raises(SystemExit) as stop:
            main(["rec", "inspect", str(rec), "--decode", "--max-image-pixels", bad])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and "--max-image-pixels" in err.splitlines()[-1] and bad in err


# --------------------------------------------------------------------------- 4. hostile label values


def _manifest(tmp_path, second_line: str):
    path = tmp_path / "m.manifest"
    path.write_text('{"source-ref": "a.jpg", "class": 1}\n' + second_line + "\n")
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"source-ref": "b.jpg", "class": 1' + "0" * 400 + "}", "too large"),
        ('{"source-ref": "b.jpg", "class": 1' + "0" * 5000 + "}", "not valid JSON"),
        ('{"source-ref": "b.jpg", "class": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
        ('{"source-ref": "b.jpg", "class": "' + "[" * 100000 + "]" * 100000 + '"}', "nested too deeply"),
        ('{"source-ref": "b.jpg", "class": [1' + "0" * 400 + ", 1]}", "too large"),
    ],
    ids=["int-overflow", "int-digit-limit", "deep-json", "deep-json-string", "multi-hot-overflow"],
)
def test_manifest_hostile_labels_are_data_errors_with_line(tmp_path, line, message):
    path = _manifest(tmp_path, line)
    with pytest.raises(DataError, match=message) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:2: ") and len(str(info.value)) < 400


def test_parse_number_overflow_and_lst_index_digits(tmp_path):
    with pytest.raises(DataError, match=r"^x.lst:3: label .*too large"):
        parse_number(10**400, "x.lst:3", "label")
    with pytest.raises(DataError, match=r"^x.lst:3: label .* not a finite number"):
        parse_number("1" * 400, "x.lst:3", "label")
    lst = tmp_path / "a.lst"
    lst.write_text("0\t1\ta.jpg\n" + "9" * 5000 + "\t1\tb.jpg\n")
    with pytest.raises(DataError, match=r"a.lst:2: index .*uint64"):
        read_lst(lst)


# --------------------------------------------------------------------------- 6. label widths


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(_jpeg())


def test_lst_channel_width_vs_num_classes_names_file_line(tmp_path):
    _images(tmp_path, ["a.jpg", "b.jpg"])
    lst = tmp_path / "train.lst"
    lst.write_text("0\t1\t0\ta.jpg\n1\t0\t1\tb.jpg\n")
    with pytest.raises(DataError, match=rf"^{lst}:1: Mismatch between number of labels in the multi-label data "
                                        r"\(2\) and the num_classes parameter \(3\)"):
        open_channel(Channel("train", tmp_path), num_classes=3)
    assert open_channel(Channel("train", tmp_path), num_classes=2).labels.shape == (2, 2)


def test_lst_files_of_different_widths_name_both(tmp_path):
    _images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "a.lst").write_text("0\t1\t0\ta.jpg\n")
    (tmp_path / "b.lst").write_text("\n0\t1\tb.jpg\n")
    with pytest.raises(DataError) as info:
        open_channel(Channel("train", tmp_path))
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'b.lst'}:2: 1 labels, but {tmp_path / 'a.lst'}:1 has 2;")


def test_rec_channel_width_vs_num_classes_names_record(tmp_path):
    rec = tmp_path / "train.rec"
    with RecordWriter(rec) as w:
        w.write(pack(IRHeader(0, 1.0, 0, 0), _jpeg()))
        w.write(pack(IRHeader(0, (1.0, 0.0), 1, 0), _jpeg()))
    with pytest.raises(DataError, match=rf"^{rec} \(record 0 at offset 0\): Mismatch between number of labels in "
                                        r"the multi-label data \(1\) and the num_classes parameter \(2\)"):
        open_channel(Channel("train", rec), num_classes=2)
    with pytest.raises(DataError, match=rf"^{rec} \(record 1 at offset \d+\): 2 labels, but {rec} \(record 0 "):
        open_channel(Channel("train", rec))


def test_manifest_width_mismatch_names_both_lines(tmp_path):
    path = tmp_path / "m.manifest"
    path.write_text('\n{"source-ref": "a.jpg", "class": [1, 0]}\n{"source-ref": "b.jpg", "class": [1, 0, 1]}\n')
    with pytest.raises(DataError, match=rf"^{path}:3: 3 labels, but the first entry has 2.*line 2"):
        read_manifest(path)


# --------------------------------------------------------------------------- 7. rec index names the target


def test_rec_index_errors_name_the_target_not_a_temp_file(tmp_path, capsys, main):
    rec = tmp_path / "a.rec"
    with RecordWriter(rec) as w:
        w.write(b"abcd")
    target = tmp_path / "missing" / "a.idx"
    assert main(["rec", "index", str(rec), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot write {target}: " in err and ".tmp" not in err and "partial" not in err


# --------------------------------------------------------------------------- 8. placeholders removed


def test_writer_has_no_placeholders():
    assert not hasattr(RecordWriter, "tell")
    assert "atomic" not in inspect.signature(RecordWriter).parameters


def test_file_system_without_locks_still_writes(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fileio.fcntl, "flock", no_locks)
    with RecordWriter(tmp_path / "a.rec") as w:
        w.write(b"x")
    assert "cannot lock" in caplog.text and os.listdir(tmp_path) == ["a.rec"]
