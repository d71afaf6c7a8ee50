"""RecordIO reader/writer against the files MXNet 1.9.1 wrote (shared/fixtures), plus properties and bad input."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from _shared import EXPECTED, FIXTURES, needs_fixtures
from hypothesis import given, settings
from hypothesis import strategies as st

from openic.errors import ClientError, DataError
from openic.formats.rec_inspect import index_records, inspect_records
from openic.formats.recordio import (
    MAGIC,
    MAGIC_BYTES,
    IRHeader,
    RecordReader,
    RecordWriter,
    encode_record,
    pack,
    split_record,
    unpack,
)


def _expected_recs() -> list[dict]:
    if not EXPECTED.is_file():
        return []
    return json.loads(EXPECTED.read_text())["recs"]


RECS = _expected_recs()
REC_IDS = [r["file"] for r in RECS]
HEADER_FIELDS = ("key", "offset", "parts", "rec_len", "flag", "label", "id", "id2", "payload_len", "payload_md5")
DECODE_FIELDS = ("format", "shape", "sum", "csum", "pix_md5")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- MXNet-written fixtures


@needs_fixtures
@pytest.mark.parametrize("rec", RECS, ids=REC_IDS)
def test_reader_matches_mxnet(rec):
    path = FIXTURES / rec["file"]
    assert path.stat().st_size == rec["file_size"]
    with RecordReader(path) as reader:
        scanned = list(reader.scan())
        assert len(scanned) == rec["num_records"]
        for (data, span), exp in zip(scanned, rec["records"], strict=True):
            assert (span.offset, span.parts, len(data)) == (exp["offset"], exp["parts"], exp["rec_len"])
            if "rec_md5" in exp:  # bare records, no image header
                assert md5(data) == exp["rec_md5"]
                continue
            header, payload = unpack(data)
            label = list(header.label) if header.flag else header.label
            assert (header.flag, label, header.id, header.id2) == (exp["flag"], exp["label"], exp["id"], exp["id2"])
            assert (len(payload), md5(payload)) == (exp["payload_len"], exp["payload_md5"])
        if "idx_file" in rec:
            assert list(reader.index.items()) == [(r["key"], r["offset"]) for r in rec["records"]]
            for exp, (data, _) in zip(rec["records"], scanned, strict=True):
                assert reader.read_key(exp["key"]) == data
        else:
            assert reader.index is None


@needs_fixtures
@pytest.mark.parametrize("rec", RECS, ids=REC_IDS)
def test_inspect_matches_mxnet(rec):
    idx = FIXTURES / rec["idx_file"] if "idx_file" in rec else None
    got = list(inspect_records(FIXTURES / rec["file"], idx, decode=True))
    assert len(got) == rec["num_records"]
    for number, (info, exp) in enumerate(zip(got, rec["records"], strict=True)):
        if "rec_md5" in exp:  # bare records: listed with their number as key and the whole record as payload
            assert info["key"] == number
            assert (info["offset"], info["parts"], info["payload_len"]) == (exp["offset"], exp["parts"], exp["rec_len"])
            assert info["payload_md5"] == exp["rec_md5"]
            continue
        assert {k: info[k] for k in HEADER_FIELDS} == {k: exp[k] for k in HEADER_FIELDS}
        assert {k: info.get(k) for k in DECODE_FIELDS} == {k: exp.get(k) for k in DECODE_FIELDS}
        assert ("decode_error" in info) == ("decode_error" in exp)


def test_inspect_short_and_headerless_records(tmp_path):
    rec = tmp_path / "plain.rec"
    with RecordWriter(rec) as w:
        w.write(b"")
        w.write(b"abc" + MAGIC_BYTES[:1])
        w.write(b"\xff" * 40)  # 24+ bytes whose "flag" announces far more labels than follow
    got = list(inspect_records(rec))
    assert [g["key"] for g in got] == [0, 1, 2]
    assert [g["payload_len"] for g in got] == [0, 4, 40]
    assert all(g["flag"] is None and g["label"] is None and g["id"] is None for g in got)
    assert "header_error" not in got[0] and "labels follow" in got[2]["header_error"]


@needs_fixtures
@pytest.mark.parametrize("rec", RECS, ids=REC_IDS)
def test_rewrite_is_byte_identical(rec, tmp_path):
    src = FIXTURES / rec["file"]
    out_rec, out_idx = tmp_path / "copy.rec", tmp_path / "copy.idx"
    has_idx = "idx_file" in rec
    with RecordReader(src) as reader, RecordWriter(out_rec, out_idx if has_idx else None) as writer:
        keys = reader.keys() if has_idx else [None] * rec["num_records"]
        for key, (data, span) in zip(keys, reader.scan(), strict=True):
            assert writer.write(data, key) == span.offset
    assert md5(out_rec.read_bytes()) == rec["file_md5"]
    if has_idx:
        assert out_idx.read_bytes() == (FIXTURES / rec["idx_file"]).read_bytes()
    assert not list(tmp_path.glob("*.partial"))


# --------------------------------------------------------------------------- properties of split records


def mxnet_write_record(data: bytes) -> bytes:
    """dmlc-core RecordIOWriter::WriteRecord, transcribed: the reference the writer is checked against."""
    out = bytearray()
    dptr = 0
    lower_align = len(data) >> 2 << 2
    for i in range(0, lower_align, 4):
        if data[i : i + 4] == MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, (1 if dptr == 0 else 2) << 29 | (i - dptr))
            out += data[dptr:i]
            dptr = i + 4
    out += struct.pack("<II", MAGIC, (3 if dptr else 0) << 29 | (len(data) - dptr))
    out += data[dptr:]
    return bytes(out + b"\0" * (-len(data) % 4))


chunks = st.one_of(st.binary(max_size=9), st.just(MAGIC_BYTES), st.just(MAGIC_BYTES * 2), st.just(MAGIC_BYTES[:3]))
payloads = st.lists(chunks, max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_split_record_matches_mxnet_writer(data):
    parts = split_record(data)
    assert MAGIC_BYTES.join(parts) == data
    aligned = sum(1 for i in range(0, len(data) - 3, 4) if data[i : i + 4] == MAGIC_BYTES)
    assert len(parts) == aligned + 1
    assert encode_record(data) == mxnet_write_record(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(payloads, max_size=6), st.integers(min_value=0, max_value=3))
def test_write_read_round_trip(tmp_path_factory, records, prefix_len):
    tmp = tmp_path_factory.mktemp("rt")
    rec, idx = tmp / "x.rec", tmp / "x.idx"
    prefix = b"p" * prefix_len  # shifts where the magic lands relative to 4-byte alignment
    records = [prefix + r for r in records]
    with RecordWriter(rec, idx) as w:
        offsets = [w.write(r, key=100 + i) for i, r in enumerate(records)]
    assert rec.read_bytes() == b"".join(mxnet_write_record(r) for r in records)
    with RecordReader(rec) as r:
        assert [d for d, _ in r.scan()] == records
        assert [s.offset for _, s in r.scan()] == offsets
        assert [r.read_key(100 + i) for i in range(len(records))] == records
        assert len(r) == len(records)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.floats(width=32, allow_nan=False), st.lists(st.floats(width=32, allow_nan=False), max_size=5)),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=40),
)
def test_pack_unpack_round_trip(label, id_, id2, payload):
    header, body = unpack(pack(IRHeader(0, label, id_, id2), payload))
    assert body == payload and (header.id, header.id2) == (id_, id2)
    if isinstance(label, list) and label:
        assert header.flag == len(label) and list(header.label) == label
    else:
        assert header.flag == 0 and header.label == (label if not isinstance(label, list) else 0.0)


# --------------------------------------------------------------------------- index files


def _write_plain(path: Path, records: list[bytes]) -> None:
    with RecordWriter(path) as w:
        for r in records:
            w.write(r)


def test_build_index_by_scanning(tmp_path):
    rec = tmp_path / "a.rec"
    records = [b"", MAGIC_BYTES, b"x" * 13, MAGIC_BYTES * 3 + b"y"]
    _write_plain(rec, records)
    with RecordReader(rec) as r:
        assert r.index is None
        index = r.build_index()
        assert list(index) == [0, 1, 2, 3]
        assert [r.read_key(k) for k in index] == records
    assert (tmp_path / "a.idx").read_text() == "".join(f"{k}\t{v}\n" for k, v in index.items())
    with RecordReader(rec) as again:  # the sibling .idx is picked up
        assert again.index == index


@needs_fixtures
def test_index_records_by_id_rebuilds_im2rec_idx(tmp_path):
    src = FIXTURES / "rec" / "digits_val.rec"
    rec = tmp_path / "digits_val.rec"
    rec.write_bytes(src.read_bytes())
    index_records(rec, key="id")
    assert (tmp_path / "digits_val.idx").read_bytes() == src.with_suffix(".idx").read_bytes()
    with pytest.raises(ClientError, match="already exists"):
        index_records(rec)


def test_index_records_by_id_rejects_repeated_ids(tmp_path):
    rec = tmp_path / "dup.rec"
    _write_plain(rec, [pack(IRHeader(0, 1.0, 7, 0), b"a"), pack(IRHeader(0, 2.0, 7, 0), b"b")])
    with pytest.raises(DataError, match="id 7 at offset 36 repeats the record at offset 0"):
        index_records(rec, key="id")
    assert index_records(rec) == {0: 0, 1: 36}


def test_idx_offset_not_at_a_record(tmp_path):
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    _write_plain(rec, [b"abcdefgh", b"ijkl"])
    idx.write_text("0\t0\n1\t4\n")
    with RecordReader(rec) as r:
        assert r.read_key(0) == b"abcdefgh"
        with pytest.raises(DataError, match=r"key 1 → offset 4 does not point at a record"):
            r.read_key(1)
        with pytest.raises(KeyError):
            r.read_key(2)
    with pytest.raises(DataError, match=r"key 1 → offset 4 is not the start of a record"):
        list(inspect_records(rec))


def test_missing_idx(tmp_path):
    rec = tmp_path / "a.rec"
    _write_plain(rec, [b"abc"])
    with pytest.raises(FileNotFoundError, match="index file not found"):
        RecordReader(rec, tmp_path / "nope.idx")
    with RecordReader(rec) as r, pytest.raises(DataError, match="no index file"):
        r.read_key(0)
    with pytest.raises(FileNotFoundError, match="RecordIO file not found"):
        RecordReader(tmp_path / "nope.rec")


def test_malformed_idx_line(tmp_path):
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    _write_plain(rec, [b"abc"])
    idx.write_text("0\t0\n1 8\n")
    with pytest.raises(DataError, match=r"a.idx:2: expected 'key<TAB>offset'"):
        RecordReader(rec)


# --------------------------------------------------------------------------- bad input


def _part(cflag: int, body: bytes) -> bytes:
    return struct.pack("<II", MAGIC, cflag << 29 | len(body)) + body + b"\0" * (-len(body) % 4)


def _scan(path: Path) -> list[bytes]:
    with RecordReader(path) as r:
        return [d for d, _ in r.scan()]


def test_empty_file(tmp_path):
    rec = tmp_path / "empty.rec"
    rec.write_bytes(b"")
    with RecordReader(rec) as r:
        assert list(r.scan()) == [] and len(r) == 0
        with pytest.raises(DataError, match="outside the file"):
            r.read_at(0)
    assert list(inspect_records(rec)) == []


@pytest.mark.parametrize("cut", [3, 8, 10, 15])
def test_truncated_file(tmp_path, cut):
    rec = tmp_path / "t.rec"
    rec.write_bytes(_part(0, b"abcdefgh")[:cut])
    with pytest.raises(DataError, match=r"t\.rec: truncated"):
        _scan(rec)


def test_wrong_magic(tmp_path):
    rec = tmp_path / "m.rec"
    rec.write_bytes(_part(0, b"abcd") + b"\x00\x00\x00\x00" + _part(0, b"x")[4:])
    with pytest.raises(DataError, match="bad magic 0x00000000 at offset 12"):
        _scan(rec)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([_part(1, b"ab")], "does not close: file ends after 1 parts"),
        ([_part(1, b"ab"), _part(2, b"cd")], "does not close: file ends after 2 parts"),
        ([_part(1, b"ab"), _part(0, b"cd")], "does not close: part 2 at offset 12 has cflag 0"),
        ([_part(1, b"ab"), _part(1, b"cd")], "does not close: part 2 at offset 12 has cflag 1"),
    ],
)
def test_split_sequence_that_does_not_close(tmp_path, parts, message):
    rec = tmp_path / "s.rec"
    rec.write_bytes(b"".join(parts))
    with pytest.raises(DataError, match=message):
        _scan(rec)


@pytest.mark.parametrize("cflag", [2, 3])
def test_continuation_part_at_start(tmp_path, cflag):
    rec = tmp_path / "c.rec"
    rec.write_bytes(_part(cflag, b"ab") + _part(0, b"cd"))
    with pytest.raises(DataError, match=f"offset 0 holds a continuation part \\(cflag {cflag}\\)"):
        _scan(rec)


def test_split_parts_are_joined_with_the_magic(tmp_path):
    rec = tmp_path / "j.rec"
    rec.write_bytes(_part(1, b"ab") + _part(2, b"") + _part(3, b"cd") + _part(0, b"e"))
    with RecordReader(rec) as r:
        got = list(r.scan())
    assert [d for d, _ in got] == [b"ab" + MAGIC_BYTES + MAGIC_BYTES + b"cd", b"e"]
    assert [(s.offset, s.parts) for _, s in got] == [(0, 3), (32, 1)]


def test_unpack_rejects_short_and_overlong_headers():
    with pytest.raises(DataError, match="shorter than the 24-byte image header"):
        unpack(b"x" * 23)
    with pytest.raises(DataError, match="says 2 labels follow"):
        unpack(struct.pack("<IfQQ", 2, 0.0, 1, 0) + b"\0" * 4)


def test_truncated_inside_padding_is_an_error(tmp_path):
    """MXNet's reader rejects a file that ends inside a record's zero padding; so does openic."""
    from openic.formats.recordio import RecordWriter

    with RecordWriter(tmp_path / "a.rec") as w:
        w.write(b"12345")  # 5 bytes + 3 padding
    data = (tmp_path / "a.rec").read_bytes()
    (tmp_path / "a.rec").write_bytes(data[:-1])
    with RecordReader(tmp_path / "a.rec") as r, pytest.raises(DataError, match="padding"):
        list(r.scan())


def test_idx_that_is_not_text_is_a_data_error(tmp_path):
    from openic.formats.recordio import RecordWriter

    with RecordWriter(tmp_path / "a.rec") as w:
        w.write(b"1234")
    (tmp_path / "a.idx").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="not a text .idx"):
        RecordReader(tmp_path / "a.rec")
    with RecordReader(tmp_path / "a.rec", use_index=False) as r:  # a scan needs no index
        assert list(r) == [b"1234"]
