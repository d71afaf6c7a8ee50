"""im2rec: .lst files and .rec/.idx byte-identical with MXNet 1.9.1 on the fixtures; MXNet's listing rules on
tiny folders; our stricter error handling (nothing half-written)."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _shared import FIXTURES, needs_fixtures
from PIL import Image

import openic.cli
from openic.errors import ClientError, DataError
from openic.formats.lst import LstEntry, read_classes, read_lst, write_lst
from openic.formats.recordio import RecordReader, unpack
from openic.prep.im2rec import (
    PackOptions,
    find_lst_files,
    pack_lst,
    pack_prefix,
)
from openic.prep.im2rec_list import ListOptions, list_images, make_list


@pytest.fixture
def main(monkeypatch):
    """``openic.cli.main`` with only this subcommand registered, so other commands' imports cannot interfere."""
    monkeypatch.setattr(openic.cli, "_COMMAND_MODULES", ("openic.cli.im2rec",))
    return openic.cli.main


def _image(path: Path, h=6, w=8, value=0, fmt=None):
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _tree(root: Path, spec: dict[str, int]):
    """spec: relative folder -> number of jpgs (named 0.jpg, 1.jpg, ...)."""
    for folder, n in spec.items():
        for i in range(n):
            _image(root / folder / f"{i}.jpg", value=i)


def _records(rec: Path):
    with RecordReader(rec) as r:
        return [(key, *unpack(r.read_key(key))) for key in r.keys()]


def _lst_texts(paths):
    return {Path(p).name: Path(p).read_text() for p in paths}


# --------------------------------------------------------------------------- fixtures made by MXNet


@needs_fixtures
def test_list_digits_matches_mxnet_byte_for_byte(tmp_path, capsys, main, digits_images):
    prefix = tmp_path / "digits"
    argv = ["im2rec", "--list", "--recursive", "--train-ratio", "0.8", "--quiet", str(prefix), str(digits_images)]
    assert main(argv) == 0
    for split in ("train", "val"):
        assert (tmp_path / f"digits_{split}.lst").read_bytes() == (FIXTURES / f"rec/digits_{split}.lst").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["digits_classes.txt", "digits_train.lst", "digits_val.lst"]
    labels = json.loads((FIXTURES / "expected.json").read_text())["label_maps"]["digits"]
    assert read_classes(tmp_path / "digits_classes.txt") == sorted(labels, key=labels.get)
    assert str(tmp_path / "digits_train.lst") in capsys.readouterr().out


@needs_fixtures
@pytest.mark.parametrize("threads", [1, 3])
def test_pass_through_pack_matches_mxnet_byte_for_byte(tmp_path, threads, main, digits_images):
    shutil.copy(FIXTURES / "rec_passthrough/digits_val.lst", tmp_path / "digits_val.lst")
    argv = ["im2rec", "--pass-through", "--num-thread", str(threads), "--quiet", str(tmp_path / "digits"),
            str(digits_images)]
    assert main(argv) == 0
    for ext in (".rec", ".idx"):
        got = (tmp_path / f"digits_val{ext}").read_bytes()
        assert got == (FIXTURES / f"rec_passthrough/digits_val{ext}").read_bytes(), ext


def _assert_same_rec(got_rec: Path, want_rec: Path):
    """Headers first (clearer failures), then every byte: our JPEG encoder reproduces OpenCV's output exactly."""
    got, want = _records(got_rec), _records(want_rec)
    assert [(k, h) for k, h, _ in got] == [(k, h) for k, h, _ in want]
    different = [k for (k, _, g), (_, _, w) in zip(got, want, strict=True) if g != w]
    assert not different, f"{len(different)} re-encoded payloads differ from MXNet's, e.g. key {different[0]}"
    assert got_rec.read_bytes() == want_rec.read_bytes()


@needs_fixtures
def test_pack_label_multilabel_matches_mxnet(tmp_path, digits_images):
    shutil.copy(FIXTURES / "multilabel/sm_multilabel.lst", tmp_path / "sm_multilabel.lst")
    res = pack_lst(tmp_path / "sm_multilabel.lst", digits_images, tmp_path / "sm_multilabel",
                   PackOptions(pack_label=True, quality=95, num_thread=2))
    assert res.written == 200 and res.skipped == ()
    assert (tmp_path / "sm_multilabel.idx").read_bytes() == (FIXTURES / "multilabel/sm_multilabel.idx").read_bytes()
    _, header, _ = _records(tmp_path / "sm_multilabel.rec")[0]
    assert header.flag == 10 and header.id == 1000
    _assert_same_rec(tmp_path / "sm_multilabel.rec", FIXTURES / "multilabel/sm_multilabel.rec")


@needs_fixtures
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "opencv"])
def test_reencoded_digits_val_matches_mxnet(tmp_path, digits_images, fast, monkeypatch):
    """Both encoders (Pillow/numpy, and OpenCV where installed) write MXNet's bytes."""
    from openic.formats import opencv

    monkeypatch.setattr(opencv, "_override", fast)
    shutil.copy(FIXTURES / "rec/digits_val.lst", tmp_path / "digits_val.lst")
    pack_prefix(tmp_path / "digits_val", digits_images, PackOptions(quality=95))
    assert (tmp_path / "digits_val.idx").read_bytes() == (FIXTURES / "rec/digits_val.idx").read_bytes()
    _assert_same_rec(tmp_path / "digits_val.rec", FIXTURES / "rec/digits_val.rec")


# --------------------------------------------------------------------------- listing rules


def test_recursive_labels_follow_sorted_walk(tmp_path):
    root = tmp_path / "imgs"
    _tree(root, {".": 1, "b": 2, "a/z": 1, "a": 1, "c_empty_of_images": 0})
    (root / "a" / "notes.txt").write_text("not an image")
    _image(root / "b" / "UPPER.JPG")
    entries, classes = list_images(root, recursive=True, exts=(".jpg",))
    assert classes == [".", "a", "a/z", "b"]  # root's own files first, then a pre-order walk in sorted order
    assert [(e.index, e.labels[0], e.path) for e in entries] == [
        (0, 0.0, "0.jpg"), (1, 1.0, "a/0.jpg"), (2, 2.0, "a/z/0.jpg"),
        (3, 3.0, "b/0.jpg"), (4, 3.0, "b/1.jpg"), (5, 3.0, "b/UPPER.JPG"),
    ]


def test_non_recursive_lists_root_files_only_with_label_zero(tmp_path):
    _tree(tmp_path / "imgs", {".": 3, "sub": 2})
    entries, _ = list_images(tmp_path / "imgs", recursive=False, exts=(".jpg",))
    assert entries == [LstEntry(i, (0.0,), f"{i}.jpg") for i in range(3)]


def test_symlink_loop_is_not_followed(tmp_path):
    root = tmp_path / "imgs"
    _tree(root, {"a": 1})
    (root / "a" / "loop").symlink_to(root)
    entries, classes = list_images(root, recursive=True, exts=(".jpg",))
    assert classes == ["a"] and len(entries) == 1


def test_no_shuffle_single_list(tmp_path):
    _tree(tmp_path / "imgs", {"x": 2, "y": 1})
    res = make_list(tmp_path / "out", tmp_path / "imgs", ListOptions(recursive=True, shuffle=False))
    assert res.lst_paths == (tmp_path / "out.lst",)
    assert (tmp_path / "out.lst").read_text() == "0\t0.000000\tx/0.jpg\n1\t0.000000\tx/1.jpg\n2\t1.000000\ty/0.jpg\n"
    assert res.classes == ("x", "y") and read_classes(res.classes_path) == ["x", "y"]


def test_shuffle_is_mxnets_seeded_permutation(tmp_path):
    import random

    _tree(tmp_path / "imgs", {".": 9})
    make_list(tmp_path / "out", tmp_path / "imgs", ListOptions())
    order, state = list(range(9)), random.getstate()
    random.seed(100)  # exactly MXNet's calls, on the global generator
    random.shuffle(order)
    random.setstate(state)
    assert [e.index for e in read_lst(tmp_path / "out.lst")] == order
    assert not (tmp_path / "out_classes.txt").exists()  # only --recursive assigns meaningful classes


def test_chunks_and_test_ratio_follow_mxnet_arithmetic(tmp_path):
    _tree(tmp_path / "imgs", {".": 10})
    opts = ListOptions(shuffle=False, chunks=3, train_ratio=0.5, test_ratio=0.25)
    res = make_list(tmp_path / "p", tmp_path / "imgs", opts)
    # chunk_size = ceil(10/3) = 4; sep = int(4*.5) = 2; sep_test = int(4*.25) = 1; last chunk has 2 images
    expected = {
        "p_0_test.lst": [0], "p_0_val.lst": [3], "p_0_train.lst": [1, 2],
        "p_1_test.lst": [4], "p_1_val.lst": [7], "p_1_train.lst": [5, 6],
        "p_2_test.lst": [8], "p_2_val.lst": [], "p_2_train.lst": [9],
    }
    assert [p.name for p in res.lst_paths] == list(expected)
    for name, indices in expected.items():
        text = (tmp_path / name).read_text()
        assert [int(line.split("\t")[0]) for line in text.splitlines()] == indices, name


def test_train_plus_test_exactly_one_writes_no_val(tmp_path):
    _tree(tmp_path / "imgs", {".": 5})
    res = make_list(tmp_path / "p", tmp_path / "imgs", ListOptions(shuffle=False, train_ratio=0.8, test_ratio=0.2))
    assert [p.name for p in res.lst_paths] == ["p_test.lst", "p_train.lst"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_ratio": 0.9, "test_ratio": 0.2}, "exceeds 1"),
        ({"train_ratio": 1.5}, r"must be in \[0, 1\]"),
        ({"chunks": 0}, "chunks must be a positive int"),
        ({"exts": ("jpg",)}, "must start with a dot"),
    ],
)
def test_list_options_validation(kwargs, match):
    with pytest.raises(ClientError, match=match):
        ListOptions(**kwargs)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    with pytest.raises(ClientError, match="no images with extensions .* directly in .*--recursive"):
        make_list(tmp_path / "out", tmp_path / "imgs")
    assert not list(tmp_path.glob("out*"))


# --------------------------------------------------------------------------- packing


def _list(tmp_path, rows, name="set.lst"):
    write_lst(tmp_path / name, [LstEntry(i, tuple(lab), p) for i, lab, p in rows])
    return tmp_path / name


def test_pack_headers_keys_and_order(tmp_path):
    root = tmp_path / "imgs"
    for i in range(7):
        _image(root / f"{i}.png", value=i, fmt="PNG")
    lst = _list(tmp_path, [(10 + i * 3, (i % 2, 1.0 - i % 2), f"{i}.png") for i in reversed(range(7))])
    res1 = pack_lst(lst, root, tmp_path / "one", PackOptions())
    pack_lst(lst, root, tmp_path / "four", PackOptions(num_thread=4))
    assert (tmp_path / "one.rec").read_bytes() == (tmp_path / "four.rec").read_bytes()
    assert (tmp_path / "one.idx").read_bytes() == (tmp_path / "four.idx").read_bytes()
    recs = _records(res1.rec_path)
    assert [k for k, _, _ in recs] == [28, 25, 22, 19, 16, 13, 10]
    for k, header, payload in recs:
        assert header.flag == 0 and header.id == k and header.id2 == 0
        assert header.label == ((k - 10) // 3) % 2  # without --pack-label only the first column is stored
        assert payload[:2] == b"\xff\xd8"  # re-encoded as JPEG


def test_pack_label_stores_all_columns(tmp_path):
    _image(tmp_path / "a.jpg")
    lst = _list(tmp_path, [(0, (1.0, 0.0, 1.0), "a.jpg")])
    pack_lst(lst, tmp_path, tmp_path / "out", PackOptions(pack_label=True))
    (_, header, _), = _records(tmp_path / "out.rec")
    assert header.flag == 3 and header.label == (1.0, 0.0, 1.0)


def test_resize_center_crop_color_and_png(tmp_path):
    _image(tmp_path / "wide.jpg", h=30, w=40)
    _image(tmp_path / "tall.jpg", h=40, w=30)
    lst = _list(tmp_path, [(0, (0,), "wide.jpg"), (1, (0,), "tall.jpg")])

    def shapes(opts, prefix):
        pack_lst(lst, tmp_path, tmp_path / prefix, opts)
        return [Image.open(io.BytesIO(p)) for _, _, p in _records(tmp_path / f"{prefix}.rec")]

    # MXNet: shorter side -> resize, longer side * resize // shorter (integer division)
    assert [im.size for im in shapes(PackOptions(resize=20), "r")] == [(26, 20), (20, 26)]
    assert [im.size for im in shapes(PackOptions(center_crop=True), "c")] == [(30, 30), (30, 30)]
    assert [im.size for im in shapes(PackOptions(center_crop=True, resize=16), "cr")] == [(16, 16), (16, 16)]
    gray = shapes(PackOptions(color=0), "g")
    assert [im.mode for im in gray] == ["L", "L"]
    png = shapes(PackOptions(encoding=".png"), "p")
    assert [im.format for im in png] == ["PNG", "PNG"] and png[0].size == (40, 30)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"color": -1}, "color -1 is not supported"),
        ({"quality": 101}, "quality must be in 0..100"),
        ({"num_thread": 0}, "num_thread must be a positive int"),
        ({"resize": -1}, "resize must be 0"),
        ({"encoding": ".bmp"}, "encoding '.bmp' is not one of"),
    ],
)
def test_pack_options_validation(kwargs, match):
    with pytest.raises(ClientError, match=match):
        PackOptions(**kwargs)


def _bad_set(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "good.jpg")
    _image(root / "good2.jpg", value=2)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    rows = [(0, (0,), "good.jpg"), (1, (1,), "missing.jpg"), (2, (0,), "broken.jpg"), (3, (1,), "good2.jpg")]
    return root, _list(tmp_path, rows)


@pytest.mark.parametrize("opts", [PackOptions(), PackOptions(num_thread=3), PackOptions(pass_through=True)])
def test_bad_images_fail_without_leaving_output(tmp_path, opts, caplog):
    root, lst = _bad_set(tmp_path)
    with pytest.raises(DataError, match=r"set.lst: 2 of 4 images could not be read, so no .rec was written") as info:
        pack_lst(lst, root, tmp_path / "out", opts)
    assert f"{lst}:2: " in str(info.value) and "missing.jpg" in str(info.value)
    assert f"{lst}:2: skipping" in caplog.text and f"{lst}:3: skipping" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["imgs", "set.lst"]  # no .rec, .idx or .partial


def test_skip_bad_packs_the_rest(tmp_path):
    root, lst = _bad_set(tmp_path)
    res = pack_lst(lst, root, tmp_path / "out", PackOptions(skip_bad=True))
    assert res.written == 2 and [s.source for s in res.skipped] == [f"{lst}:2", f"{lst}:3"]
    assert "cannot read the file" in res.skipped[0].reason and "cannot decode" in res.skipped[1].reason
    assert [k for k, _, _ in _records(res.rec_path)] == [0, 3]


def test_all_bad_fails_even_with_skip_bad(tmp_path):
    lst = _list(tmp_path, [(0, (0,), "missing.jpg")])
    with pytest.raises(DataError, match="none of the 1 images could be read"):
        pack_lst(lst, tmp_path, tmp_path / "out", PackOptions(skip_bad=True))
    assert not (tmp_path / "out.rec").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("0\t1\t../outside.jpg\n", r"bad.lst:1: image path '../outside.jpg' points outside the image root"),
        ("0\t1\t/etc/hosts\n", r"bad.lst:1: image path '/etc/hosts' is absolute"),
        ("0\t1\ta.jpg\n1\tx\ta.jpg\n", r"bad.lst:2: label 'x'"),
    ],
)
def test_bad_list_lines_fail_before_writing(tmp_path, text, match):
    _image(tmp_path / "a.jpg")
    (tmp_path / "bad.lst").write_text(text)
    with pytest.raises(DataError, match=match):
        pack_lst(tmp_path / "bad.lst", tmp_path, tmp_path / "bad")
    assert not list(tmp_path.glob("bad.rec*")) and not list(tmp_path.glob("bad.idx*"))


def test_prefix_matching_like_mxnet(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg")
    for name in ("d_train.lst", "d_val.lst", "d2.lst", "other.lst"):
        _list(tmp_path, [(0, (0,), "a.jpg")], name)
    (tmp_path / "d_notes.txt").write_text("x")
    assert [p.name for p in find_lst_files(tmp_path / "d")] == ["d2.lst", "d_train.lst", "d_val.lst"]
    assert [p.name for p in find_lst_files(tmp_path / "d_val.lst")] == ["d_val.lst"]
    assert len(find_lst_files(tmp_path)) == 4
    results = pack_prefix(tmp_path / "d_", tmp_path / "imgs", PackOptions())
    assert [r.rec_path.name for r in results] == ["d_train.rec", "d_val.rec"]
    assert (tmp_path / "d_val.idx").read_text() == "0\t0\n"
    with pytest.raises(ClientError, match="no .lst file matches the prefix"):
        pack_prefix(tmp_path / "zzz", tmp_path / "imgs")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, main):
    root, lst = _bad_set(tmp_path)
    assert main(["im2rec", "--quiet", str(tmp_path / "set"), str(root)]) == 2
    err = capsys.readouterr().err
    assert "openic im2rec: error: " in err and "Traceback" not in err
    assert main(["im2rec", "--quiet", "--skip-bad", str(tmp_path / "set"), str(root)]) == 0
    assert "set.rec: 2 records, skipped 2" in capsys.readouterr().out
    argv = ["im2rec", "--list", "--train-ratio", "0.8", "--test-ratio", "0.5", str(tmp_path / "x"), str(root)]
    assert main(argv) == 2


def test_cli_shuffle_spellings(tmp_path, main):
    _tree(tmp_path / "imgs", {".": 5})
    main(["im2rec", "--list", "--quiet", "--shuffle", "false", str(tmp_path / "a"), str(tmp_path / "imgs")])
    main(["im2rec", "--list", "--quiet", "--no-shuffle", str(tmp_path / "b"), str(tmp_path / "imgs")])
    main(["im2rec", "--list", "--quiet", str(tmp_path / "c"), str(tmp_path / "imgs")])
    assert [e.index for e in read_lst(tmp_path / "a.lst")] == [0, 1, 2, 3, 4]
    assert (tmp_path / "a.lst").read_bytes() == (tmp_path / "b.lst").read_bytes()
    assert (tmp_path / "c.lst").read_bytes() != (tmp_path / "a.lst").read_bytes()


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    _image(tmp_path / "a.jpg")
    lst = _list(tmp_path, [(0, (0,), "a.jpg"), (1, (0,), "a.jpg")])
    pack_lst(lst, tmp_path, tmp_path / "out", PackOptions(progress=True))
    captured = capsys.readouterr()
    assert "set.lst" in captured.err and "2/2" in captured.err and captured.out == ""


def test_exif_rotated_photo_is_packed_upright_like_cv2_imread(tmp_path):
    """MXNet's im2rec reads with cv2.imread, which applies EXIF orientation; pass-through keeps the bytes."""
    root = tmp_path / "img"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(root / "a.jpg", exif=exif.tobytes())
    lst = tmp_path / "x.lst"
    write_lst(lst, [LstEntry(0, (0.0,), "a.jpg")])
    pack_lst(lst, root, tmp_path / "x", PackOptions())
    from openic.formats.images import decode_image

    (_, _, payload), = _records(tmp_path / "x.rec")
    assert decode_image(payload).shape == (64, 40, 3)


def test_train_ratio_1_ignores_test_ratio_like_mxnet(tmp_path):
    _tree(tmp_path / "imgs", {"a": 3})
    res = make_list(tmp_path / "p", tmp_path / "imgs", ListOptions(recursive=True, test_ratio=0.3))
    assert [p.name for p in res.lst_paths] == ["p.lst"]
    assert len(read_lst(res.lst_paths[0])) == 3


def test_exts_compare_with_lowercased_suffix_like_mxnet(tmp_path):
    _tree(tmp_path / "imgs", {"a": 2})
    with pytest.raises(ClientError, match="no images"):
        make_list(tmp_path / "p", tmp_path / "imgs", ListOptions(recursive=True, exts=(".JPG",)))
