"""`.lst` reading/writing: MXNet's fixture lists, every error case, byte-exact writing, path checks."""

import hashlib
import json
import os

import pytest
from _shared import FIXTURES, needs_fixtures

from openic.errors import DataError
from openic.formats.lst import LstEntry, read_lst, read_lst_with_lines, resolve_image_path, write_lst


def _expected_lsts():
    if not (FIXTURES / "expected.json").is_file():
        return []
    return json.loads((FIXTURES / "expected.json").read_text())["lsts"]


@needs_fixtures
@pytest.mark.parametrize("exp", _expected_lsts(), ids=lambda e: e["file"])
def test_reads_mxnet_fixture_lists(exp):
    entries = read_lst(FIXTURES / exp["file"])
    assert len(entries) == exp["num_lines"]
    assert all(len(e.labels) == exp["label_columns"] for e in entries)
    for entry, row in zip(entries, exp["first_rows"], strict=False):
        assert entry == LstEntry(row[0], tuple(row[1:-1]), row[-1])
    assert hashlib.md5((FIXTURES / exp["file"]).read_bytes()).hexdigest() == exp["md5"]


@needs_fixtures
@pytest.mark.parametrize("name", ["rec/digits_train.lst", "rec/digits_val.lst"])
def test_write_lst_is_byte_identical_to_mxnet(tmp_path, name):
    out = tmp_path / "out.lst"
    write_lst(out, read_lst(FIXTURES / name))
    assert out.read_bytes() == (FIXTURES / name).read_bytes()
    assert not list(tmp_path.glob("*.partial"))


@needs_fixtures
def test_multilabel_width_and_num_classes():
    path = FIXTURES / "multilabel/sm_multilabel.lst"
    assert len(read_lst(path, num_classes=10)) == 200
    with pytest.raises(DataError, match=r"sm_multilabel.lst:1: Mismatch between number of labels in the "
                                        r"multi-label data \(10\) and the num_classes parameter \(5\)\."):
        read_lst(path, num_classes=5)


def test_int_and_float_labels_blank_lines_and_whitespace(tmp_path):
    p = tmp_path / "a.lst"
    p.write_text("\n3\t1\ta/x.jpg\n\n 7 \t 2.5 \t b/y.png \n")
    assert read_lst_with_lines(p) == [(2, LstEntry(3, (1.0,), "a/x.jpg")), (4, LstEntry(7, (2.5,), "b/y.png"))]


def test_utf8_bom_is_ignored(tmp_path):
    p = tmp_path / "bom.lst"
    p.write_bytes("\ufeff0\t1\tä.jpg\n".encode())
    assert read_lst(p) == [LstEntry(0, (1.0,), "ä.jpg")]


@pytest.mark.parametrize(
    "text, match",
    [
        ("0\t1\ta.jpg\n1\tb.jpg\n", r":2: expected at least 3 TAB-separated fields"),
        ("0 1 a.jpg\n", r":1: expected at least 3"),
        ("x\t1\ta.jpg\n", r":1: index 'x' is not a non-negative integer"),
        ("-1\t1\ta.jpg\n", r":1: index '-1' is not a non-negative integer"),
        ("1.5\t1\ta.jpg\n", r":1: index '1.5'"),
        (f"{2**64}\t1\ta.jpg\n", r":1: index 18446744073709551616 does not fit"),
        ("0\tcat\ta.jpg\n", r":1: label 'cat' in column 2 is not a number"),
        ("0\tnan\ta.jpg\n", r":1: label 'nan' in column 2 is not a finite number"),
        ("0\t1\ta.jpg\n1\t2\tb.jpg\n0\t3\tc.jpg\n", r":3: index 0 already used on line 1"),
        ("0\t1\t0\ta.jpg\n1\t1\tb.jpg\n", r":2: 1 label columns, but line 1 has 2"),
        ("0\t1\t\n", r":1: .*fields|:1: the image path"),
        ("", r"has no entries"),
        ("\n  \n", r"has no entries"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, match):
    p = tmp_path / "bad.lst"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        read_lst(p)
    assert str(p) in str(info.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.lst"
    p.write_bytes(b"0\t1\t\xe9.jpg\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_lst(p)


def test_write_format_and_atomicity(tmp_path):
    out = tmp_path / "w.lst"
    write_lst(out, [LstEntry(5, (1.0, 0.0), "a/b c.jpg"), LstEntry(2, (3.25,), "d.png")])
    assert out.read_text() == "5\t1.000000\t0.000000\ta/b c.jpg\n2\t3.250000\td.png\n"
    out.write_text("old\n")
    with pytest.raises(DataError, match="TAB/newline"):
        write_lst(out, [LstEntry(0, (1.0,), "ok.jpg"), LstEntry(1, (1.0,), "bad\tname.jpg")])
    assert out.read_text() == "old\n"  # the old file is untouched, no temp file left
    assert sorted(os.listdir(tmp_path)) == ["w.lst"]


def test_roundtrip(tmp_path):
    entries = [LstEntry(i, (float(i % 3), 1.0), f"c{i % 3}/{i:04d}.jpg") for i in range(20)]
    write_lst(tmp_path / "r.lst", entries)
    assert read_lst(tmp_path / "r.lst", num_classes=2) == entries


def test_resolve_image_path(tmp_path):
    assert resolve_image_path(tmp_path, "a/b.jpg", source="x.lst:1") == tmp_path / "a" / "b.jpg"
    assert resolve_image_path(tmp_path, "a/../b.jpg", source="x.lst:1") == tmp_path / "b.jpg"
    assert resolve_image_path(tmp_path, "./a//b.jpg", source="x.lst:1") == tmp_path / "a" / "b.jpg"
    for bad, match in [
        ("/etc/passwd", "is absolute"),
        ("../secret.jpg", "outside the image root"),
        ("a/../../secret.jpg", "outside the image root"),
        ("..", "outside the image root"),
        (".", "root .* itself"),
        ("", "empty image path"),
    ]:
        with pytest.raises(DataError, match=match) as info:
            resolve_image_path(tmp_path, bad, source="x.lst:7")
        assert str(info.value).startswith("x.lst:7: ")


def test_resolve_allows_symlinks_leaving_root(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "img.jpg").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(store)
    path = resolve_image_path(root, "link/img.jpg", source="x.lst:1")
    assert path.read_bytes() == b"x"
