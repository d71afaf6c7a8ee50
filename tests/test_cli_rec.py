"""``openic rec inspect|index`` through ``openic.cli.main``."""

from __future__ import annotations

import json

import pytest
from _shared import EXPECTED, FIXTURES, needs_fixtures

from openic.cli import main
from openic.formats.recordio import RecordWriter

COMPARED = ("key", "offset", "parts", "rec_len", "flag", "label", "id", "id2", "payload_len", "payload_md5", "format")
DECODED = ("shape", "sum", "csum", "pix_md5")


def expected_rec(name: str) -> dict:
    return next(r for r in json.loads(EXPECTED.read_text())["recs"] if r["file"] == name)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@needs_fixtures
@pytest.mark.parametrize("name", ["raw/raw_payloads.rec", "multilabel/direct_multihot.rec"])
def test_inspect_prints_expected_records(capsys, name):
    assert main(["rec", "inspect", str(FIXTURES / name), "--decode"]) == 0
    got = json_lines(capsys.readouterr().out)
    want = expected_rec(name)["records"]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in COMPARED} == {k: w[k] for k in COMPARED}
        assert {k: g.get(k) for k in DECODED} == {k: w.get(k) for k in DECODED}
        assert ("decode_error" in g) == ("decode_error" in w)


@needs_fixtures
def test_inspect_without_decode_and_explicit_idx(capsys):
    rec = FIXTURES / "rec_passthrough" / "digits_val.rec"
    assert main(["rec", "inspect", str(rec), "--idx", str(rec.with_suffix(".idx"))]) == 0
    got = json_lines(capsys.readouterr().out)
    want = expected_rec("rec_passthrough/digits_val.rec")["records"]
    assert [g["key"] for g in got] == [w["key"] for w in want]
    assert "shape" not in got[0] and got[0]["payload_md5"] == want[0]["payload_md5"]


@needs_fixtures
def test_truncated_file_is_one_line_error(capsys, tmp_path):
    data = (FIXTURES / "rec" / "digits_val.rec").read_bytes()
    bad = tmp_path / "cut.rec"
    bad.write_bytes(data[:2500])
    assert main(["rec", "inspect", str(bad)]) == 2
    captured = capsys.readouterr()
    assert len(json_lines(captured.out)) == 2  # the records before the cut are still printed
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("openic rec: error: ") and "cut.rec: truncated record at offset 1992" in err


def test_missing_file_is_one_line_error(capsys, tmp_path):
    assert main(["rec", "inspect", str(tmp_path / "nope.rec")]) == 2
    assert capsys.readouterr().err.strip() == f"openic rec: error: RecordIO file not found: {tmp_path / 'nope.rec'}"


def test_index_builds_missing_idx_then_refuses_to_overwrite(capsys, tmp_path):
    rec = tmp_path / "plain.rec"
    with RecordWriter(rec) as w:
        for payload in (b"a", b"bb", b"ccc"):
            w.write(payload)
    assert main(["rec", "index", str(rec)]) == 0
    assert json.loads(capsys.readouterr().out) == {"idx": str(tmp_path / "plain.idx"), "records": 3}
    assert (tmp_path / "plain.idx").read_text() == "0\t0\n1\t12\n2\t24\n"
    assert main(["rec", "inspect", str(rec)]) == 0
    assert [g["key"] for g in json_lines(capsys.readouterr().out)] == [0, 1, 2]
    assert main(["rec", "index", str(rec)]) == 2
    assert "already exists" in capsys.readouterr().err
