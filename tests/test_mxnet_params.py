"""openic's numpy reader of MXNet's ``.params`` files and symbol JSON (no MXNet): files MXNet 1.9.1 wrote
(``tests/data/mxnet_params_cases``, the fixture checkpoints) read exactly as ``mx.nd.load`` returns them, and every
damaged or foreign file refused with a message that names the file, the offset and what was found."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from _shared import FIXTURES
from mxnet_helpers import members, params_bytes, record, symbol

from openic.errors import ClientError
from openic.formats.mxnet_params import parse_params, read_params, split_checkpoint
from openic.formats.mxnet_symbol import parse_symbol, resnet_graph

CASES = Path(__file__).parent / "data" / "mxnet_params_cases"
R20 = FIXTURES / "mxnet_models" / "resnet20_3x28x28_c10" / "model.tar.gz"


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.params")))
def test_reads_what_mxnet_wrote_exactly(case):
    got = read_params(CASES / f"{case}.params")
    want = dict(np.load(CASES / f"{case}.npz"))
    assert list(got) == list(want)  # names, in file order (an unnamed list: "0", "1", ...)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_all_cases_present():
    listed = json.loads((CASES / "cases.json").read_text())["cases"]
    assert sorted(listed) == sorted(p.stem for p in CASES.glob("*.params")) and len(listed) >= 5


def test_bfloat16_and_empty_and_sparse_storage_quirk():
    bf16 = struct.pack("<Iii1q", 0xF993FAC9, 0, 1, 2) + struct.pack("<iii", 1, 0, 12)
    bf16 += np.array([0x3FC0, 0xC000], "<u2").tobytes()  # 1.5 and -2.0 as bfloat16
    empty = struct.pack("<Iii", 0xF993FAC9, 0, 0)  # V2 ndim 0: a "none" array, nothing follows
    # row_sparse (3,2) with rows 0 and 2 stored, storage shape written as (0,) as MXNet sometimes does
    rsp = struct.pack("<Iii1q", 0xF993FAC9, 1, 1, 0) + struct.pack("<i2q", 2, 3, 2) + struct.pack("<iii", 1, 0, 0)
    rsp += struct.pack("<ii1q", 6, 1, 2) + np.array([[1, 2], [3, 4]], "<f4").tobytes()
    rsp += np.array([0, 2], "<i8").tobytes()
    got = parse_params(params_bytes({"b": None, "e": None, "r": None}, [bf16, empty, rsp]))
    assert got["b"].dtype == np.float32 and got["b"].tolist() == [1.5, -2.0]
    assert got["e"] is None
    assert got["r"].tolist() == [[1, 2], [0, 0], [3, 4]]


def test_fixture_checkpoint_layout():
    arrays = parse_params(members(R20)["image-classification-0001.params"], "r20")
    assert len(arrays) == 104
    args, auxs = split_checkpoint(arrays, "r20")
    assert sum(a.size for a in args.values()) == 272_544  # README: the weight count of resnet20_3x28x28_c10
    assert set(auxs) == {k for k in auxs if k.endswith(("_moving_mean", "_moving_var"))}


def test_every_truncation_is_refused_with_an_offset():
    data = params_bytes({"arg:a": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:b": np.ones(3, np.float64)})
    for cut in range(len(data)):
        with pytest.raises(ClientError, match=r"f\.params: not a valid MXNet \.params file: .* at byte \d+"):
            parse_params(data[:cut], "f.params")
    assert parse_params(data)["arg:a"].shape == (2, 3)


def test_fixture_truncations_are_refused():
    data = members(R20)["image-classification-0001.params"]
    for cut in (0, 7, 24, 100, len(data) // 2, len(data) - 19, len(data) - 1):
        with pytest.raises(ClientError, match="not a valid MXNet .params file"):
            parse_params(data[:cut], "r20.params")


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GOOD = params_bytes({"arg:a": np.arange(6, dtype=np.float32).reshape(2, 3)})


@pytest.mark.parametrize("data, match", [
    (_corrupt(GOOD, 0, struct.pack("<Q", 0x113)), r"no NDArray list header \(magic 0x112\)"),
    (_corrupt(GOOD, 24, struct.pack("<I", 0xDEADBEEF)), r"unknown NDArray record magic 0xDEADBEEF"),
    (_corrupt(GOOD, 28, struct.pack("<i", 5)), r"unknown storage type 5"),
    (_corrupt(GOOD, 32, struct.pack("<i", 40)), r"shape with 40 dimensions"),
    (_corrupt(GOOD, 36, struct.pack("<q", -3)), r"negative dimension"),
    (_corrupt(GOOD, 60, struct.pack("<i", 99)), r"unknown dtype flag 99"),
    (_corrupt(GOOD, 36, struct.pack("<q", 2**40)), r"larger than the rest of the file"),
    (_corrupt(GOOD, 16, struct.pack("<Q", 2**60)), r"arrays announced, more than the file can hold"),
    (GOOD + b"\x00", r"1 unexpected bytes after the last name"),
    (params_bytes({"arg:zz": np.ones(1, np.float32)}).replace(b"arg:zz", b"arg:\xff\xfe"), r"name 0 is not UTF-8"),
    (params_bytes({"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}).replace(b"y", b"x"),
     r"duplicate array names"),
])
def test_corrupt_files_name_what_was_found(data, match):
    with pytest.raises(ClientError, match=match):
        parse_params(data, "m.params")


def _sparse(storage: tuple, shape: tuple, aux: tuple, values: int, rows: int) -> bytes:
    rec = struct.pack(f"<Iii{len(storage)}q", 0xF993FAC9, 1, len(storage), *storage)
    rec += struct.pack(f"<i{len(shape)}q", len(shape), *shape) + struct.pack("<iii", 1, 0, 0)
    rec += struct.pack(f"<ii{len(aux)}q", 6, len(aux), *aux)
    return rec + np.zeros(values, "<f4").tobytes() + np.arange(rows, dtype="<i8").tobytes()


@pytest.mark.parametrize("rec, match", [
    (struct.pack("<Iii2q", 0xF993FAC9, 0, 2, 2**32, 2**32) + struct.pack("<iii", 1, 0, 0),
     r"shape \(4294967296, 4294967296\) \(<f4\) is larger than the rest"),  # would wrap around in int64
    (struct.pack("<Iii2q", 0xF993FAC9, 0, 2, 2**32, 2**32) + struct.pack("<iii", 1, 0, 12), r"\(bfloat16\) is larger"),
    (_sparse((0,), (2**38, 1), (0,), 0, 0), r"would take more than 1024 MiB dense"),
    (_sparse((2, 5), (4, 3), (2,), 10, 2), r"storage shape \(2, 5\) does not fit the array shape \(4, 3\)"),
    (_sparse((1,), (4, 3), (), 0, 0), r"aux shape \(\) \(expected one dimension\)"),
])
def test_hostile_shapes_are_refused_before_allocating(rec, match):
    with pytest.raises(ClientError, match=match):
        parse_params(params_bytes({"a": None}, [rec]), "h.params")


def test_non_checkpoint_names_are_refused():
    with pytest.raises(ClientError, match=r"entry 'weights' is not 'arg:NAME' or 'aux:NAME'"):
        split_checkpoint({"weights": np.ones(1)}, "g.params")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ClientError, match="missing.params: cannot be read"):
        read_params(tmp_path / "missing.params")


def test_symbol_of_the_fixture():
    raw = json.loads(members(R20)["image-classification-symbol.json"])
    g = resnet_graph(parse_symbol(raw, "s"), "s")
    assert (g.block, g.units, g.stem_width, g.stem_kernel, g.widths, g.num_classes, g.multi_label) == (
        "basic", (3, 3, 3), 16, 3, (16, 32, 64), 10, False)


def test_old_mxnet_attribute_keys_are_read():
    raw = symbol(50, 7, 224)
    for node in raw["nodes"]:
        node["param"] = node.pop("attrs", {})  # MXNet 0.x
    g = resnet_graph(parse_symbol(raw, "s"), "s")
    assert (g.block, g.units, g.stem_kernel, g.widths) == ("bottleneck", (3, 4, 6, 3), 7, (256, 512, 1024, 2048))


def _with(raw: dict, name: str, **attrs: str) -> dict:
    for node in raw["nodes"]:
        if node["name"] == name:
            node["attrs"] = node.get("attrs", {}) | attrs
    return raw


def _vgg() -> dict:
    return {"nodes": [{"op": "null", "name": "data", "inputs": []},
                      {"op": "Convolution", "name": "conv1_1", "attrs": {"num_filter": "64", "kernel": "(3, 3)"}},
                      {"op": "LRN", "name": "norm1", "attrs": {}},
                      {"op": "FullyConnected", "name": "fc8", "attrs": {"num_hidden": "1000"}},
                      {"op": "SoftmaxOutput", "name": "prob", "attrs": {}}]}


@pytest.mark.parametrize("raw, match", [
    (_vgg(), r"not SageMaker's image-classification ResNet \(operators it never uses: LRN; missing nodes: bn_data"),
    ([1, 2], r"not an MXNet symbol JSON"),
    ({"nodes": [{"op": 3}]}, r"node 0 is"),
    ({"nodes": [n for n in symbol(18, 2, 32)["nodes"] if not n["name"].startswith("stage2_unit2")]
      + [{"op": "Convolution", "name": "stage2_unit3_conv1", "attrs": {"num_filter": "128", "kernel": "(3, 3)"}}]},
     r"not numbered stage1..S / unit1..U"),
    (_with(symbol(20, 2, 28), "stage2_unit1_relu1", act_type="tanh"), r"stage2_unit1_relu1 act_type=tanh"),
    (_with(symbol(20, 2, 28), "stage1_unit2_bn2", eps="0.001"), r"stage1_unit2_bn2 eps=0.001"),
    (_with(symbol(20, 2, 28), "bn_data", fix_gamma="False"), r"bn_data fix_gamma=False"),
    (_with(symbol(20, 2, 28), "pool1", global_pool="False"), r"pool1 is not a global pool"),
    (_with(symbol(20, 2, 28), "conv0", stride="(3, 3)"), r"conv0 stride=\(3, 3\)"),
    ({"nodes": [{"op": "Convolution", "name": "stage" + "9" * 5000 + "_unit1_conv1", "attrs": {}}]}, r"not SageMaker"),
])
def test_other_graphs_are_refused(raw, match):
    with pytest.raises(ClientError, match=match):
        resnet_graph(parse_symbol(raw, "g.json"), "g.json")


def test_record_helper_round_trip():
    a = np.arange(4, dtype=np.int64)
    assert parse_params(params_bytes({"k": a}, [record(a)]))["k"].tolist() == [0, 1, 2, 3]
