"""Augmented manifests: every label form SageMaker accepts, attribute detection, errors with file:line."""

import json

import pytest

from openic.errors import ClientError, DataError
from openic.formats.manifest import ManifestEntry, parse_label_format, read_manifest


def _write(tmp_path, rows, name="m.manifest"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_scalar_labels_number_and_string(tmp_path):
    p = _write(tmp_path, [
        {"source-ref": "s3://b/a.jpg", "class": 3, "class-metadata": {"class-name": "cat"}},
        {"source-ref": "b.jpg", "class": "1", "class-metadata": {}},
        {"source-ref": "c.jpg", "class": 2.0},
    ])
    assert read_manifest(p) == [
        ManifestEntry("s3://b/a.jpg", (3.0,)), ManifestEntry("b.jpg", (1.0,)), ManifestEntry("c.jpg", (2.0,))
    ]
    assert read_manifest(p, "class", num_classes=4)[0].labels == (3.0,)
    with pytest.raises(DataError, match=r"m.manifest:1: label 3 is not a class id in 0..2"):
        read_manifest(p, num_classes=3)


def test_multi_hot_string_and_list(tmp_path):
    p = _write(tmp_path, [
        {"source-ref": "a.jpg", "labels": "[1, 0, 1]"},
        {"source-ref": "b.jpg", "labels": [0, 1, 0]},
    ])
    got = read_manifest(p, "labels", num_classes=3)
    assert got == [ManifestEntry("a.jpg", (1.0, 0.0, 1.0)), ManifestEntry("b.jpg", (0.0, 1.0, 0.0))]
    with pytest.raises(DataError, match=r":1: Mismatch between number of labels in the multi-label data \(3\) "
                                        r"and the num_classes parameter \(4\)\."):
        read_manifest(p, "labels", num_classes=4)


def test_class_ids(tmp_path):
    p = _write(tmp_path, [
        {"source-ref": "a.jpg", "class": "[0, 2]"},
        {"source-ref": "b.jpg", "class": [3]},
        {"source-ref": "c.jpg", "class": 1},
        {"source-ref": "d.jpg", "class": "[]"},
    ])
    got = read_manifest(p, label_format="class-id", num_classes=4)
    assert [e.labels for e in got] == [(1, 0, 1, 0), (0, 0, 0, 1), (0, 1, 0, 0), (0, 0, 0, 0)]
    with pytest.raises(ClientError, match="needs num_classes"):
        read_manifest(p, label_format="class-id")
    with pytest.raises(DataError, match=r":1: class id 2 is not an integer in 0..1"):
        read_manifest(p, label_format="class-id", num_classes=2)


def test_class_ids_without_label_format_are_caught(tmp_path):
    p = _write(tmp_path, [{"source-ref": "a.jpg", "class": "[0, 2]"}])
    with pytest.raises(DataError, match=r":1: multi-hot label .* other than 0 and 1; .*label-format=class-id"):
        read_manifest(p)


def test_attribute_detection(tmp_path):
    ambiguous = _write(tmp_path, [{"source-ref": "a.jpg", "class": 1, "other": 2, "class-metadata": {}}])
    with pytest.raises(DataError, match=r":1: several possible label attributes \['class', 'other'\]"):
        read_manifest(ambiguous)
    assert read_manifest(ambiguous, "other")[0].labels == (2.0,)
    none = _write(tmp_path, [{"source-ref": "a.jpg", "class-metadata": {}}], "n.manifest")
    with pytest.raises(DataError, match=r"n.manifest:1: no label attribute found"):
        read_manifest(none)
    later = _write(tmp_path, [{"source-ref": "a.jpg", "c": 1}, {"source-ref": "b.jpg", "d": 1}], "l.manifest")
    with pytest.raises(DataError, match=r"l.manifest:2: label attribute 'c' is missing"):
        read_manifest(later)


@pytest.mark.parametrize(
    "rows, match",
    [
        (['{"source-ref": "a.jpg", "class": 1', ], r":1: not valid JSON"),
        (["[1, 2]"], r":1: expected a JSON object, got list"),
        ([{"class": 1}], r":1: missing or empty 'source-ref'"),
        ([{"source-ref": "", "class": 1}], r":1: missing or empty 'source-ref'"),
        ([{"source-ref": "a.jpg", "class": "dog"}], r":1: label 'class' = 'dog' is not a number"),
        ([{"source-ref": "a.jpg", "class": True}], r":1: label 'class' = True is not a number"),
        ([{"source-ref": "a.jpg", "class": "[1, 0"}], r":1: label 'class' = '\[1, 0' is not a valid JSON array"),
        ([{"source-ref": "a.jpg", "class": [1, "x"]}], r":1: multi-hot entry 'x' is not a number"),
        ([{"source-ref": "a.jpg", "class": "NaN"}], r":1: .* is not a finite number"),
        ([{"source-ref": "a.jpg", "class": [1, 0]}, {"source-ref": "b.jpg", "class": [1]}],
         r":2: 1 labels, but the first entry has 2"),
        ([], r"has no entries"),
    ],
)
def test_errors(tmp_path, rows, match):
    p = _write(tmp_path, rows)
    with pytest.raises(DataError, match=match) as info:
        read_manifest(p, "class" if rows and "class" in str(rows[0]) else None)
    assert str(p) in str(info.value)


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    p = _write(tmp_path, ["", json.dumps({"source-ref": "a.jpg", "c": 1}), "", '{"source-ref": "b.jpg", "c": "x"}'])
    with pytest.raises(DataError, match=r"m.manifest:4: "):
        read_manifest(p)


def test_unknown_label_format():
    with pytest.raises(ClientError, match="label_format 'one-hot' is not one of multi-hot, class-id"):
        read_manifest("unused.manifest", label_format="one-hot")


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("application/x-recordio", "multi-hot"),
        ("application/x-recordio; label-format=class-id", "class-id"),
        ("application/x-recordio;label-format=multi-hot", "multi-hot"),
        ("application/x-recordio; charset=utf-8; Label-Format = \"CLASS-ID\"", "class-id"),
        ("application/x-image", "multi-hot"),
    ],
)
def test_parse_label_format(content_type, expected):
    assert parse_label_format(content_type) == expected


def test_parse_label_format_rejects_unknown():
    with pytest.raises(ClientError, match=r"label-format 'one-hot' is not one of multi-hot, class-id"):
        parse_label_format("application/x-recordio; label-format=one-hot")
