"""The MXNet fixture subset shipped in tests/data/mxnet: byte copies of files of the full set, listed in its
MD5SUMS, and an expected.json that is the full one less the entries for files not copied. Where the full set is
present (``../shared/fixtures``) the subset is also compared with it."""

import hashlib
import json

from _shared import FULL, SUBSET

OWN = {"README.md", "expected.json", "MD5SUMS"}  # the subset's own files; every other file is a copy


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def md5sums():
    lines = (SUBSET / "MD5SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def trimmed(expected, have):
    """``expected`` less what names a file for which ``have(rel)`` is false (how the subset's copy was made)."""
    out = dict(expected)
    for key in ("recs", "lsts", "image_record_iter"):
        out[key] = [e for e in expected[key] if have(e["file"]) and have(e.get("idx_file", e["file"]))]
    out["decoded_arrays"] = {k: v for k, v in expected["decoded_arrays"].items() if have(k) and have(v)}
    out["pil_vs_mxnet_decode"] = {k: v for k, v in expected["pil_vs_mxnet_decode"].items() if have(k)}
    return out


def test_subset_files_are_copies_listed_in_md5sums():
    sums = md5sums()
    copies = [p for p in sorted(SUBSET.rglob("*")) if p.is_file() and p.relative_to(SUBSET).as_posix() not in OWN]
    assert len(copies) > 20
    for path in copies:
        assert md5(path) == sums[path.relative_to(SUBSET).as_posix()], path
    size = sum(p.stat().st_size for p in SUBSET.rglob("*") if p.is_file())
    assert size < 3_000_000, size  # the repository carries at most ~3 MB of fixtures


def test_subset_expected_json_names_only_files_it_has():
    expected = json.loads((SUBSET / "expected.json").read_text())
    assert expected == trimmed(expected, lambda rel: (SUBSET / rel).is_file())
    assert {r["file"] for r in expected["recs"]} >= {"raw/raw_payloads.rec", "rec/digits_val.rec",
                                                     "multilabel/sm_multilabel.rec", "rec_passthrough/digits_val.rec"}
    if (FULL / "expected.json").is_file():
        full = json.loads((FULL / "expected.json").read_text())
        assert expected == trimmed(full, lambda rel: (SUBSET / rel).is_file())
        listed = {p.relative_to(FULL).as_posix(): md5(p) for p in FULL.rglob("*") if p.is_file()}
        assert md5sums() == listed
