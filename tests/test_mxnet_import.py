"""SageMaker's own (MXNet-trained) image-classification artifacts, read without MXNet: predictions equal MXNet's
from the uint8 input through every way in (library, HTTP endpoint, SDK, transform, predict, import-mxnet), damaged
or foreign artifacts refused by name, and imported models fine-tuned through the ``model`` channel."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import FIXTURES
from mxnet_helpers import fixture_arrays, members, params_bytes, symbol, tar_folder, write_checkpoint, write_tar
from serving_helpers import SRC, npy, post, start_server

from openic.artifacts import load_model, read_model_metadata
from openic.artifacts.convert import import_mxnet
from openic.cli import main
from openic.errors import ClientError
from openic.formats.images import encode_image
from openic.serving.handler import NPY_TYPE, decode, load

MODELS = FIXTURES / "mxnet_models"
GENERATED = Path(__file__).parent / "data" / "mxnet_generated"  # untrained, MXNet-written: gray, multi-label, ...
FOLDERS = sorted(d for root in (MODELS, GENERATED) for d in root.iterdir()
                 if (d / "model.tar.gz").is_file() and (d / "probs.npy").is_file())
R20 = MODELS / "resnet20_3x28x28_c10"
PARAMS = "image-classification-0001.params"


def _mxnet(folder):
    return np.load(folder / "inputs.npy"), np.load(folder / "probs.npy"), np.load(folder / "logits.npy")


def _served(path, inputs: np.ndarray) -> np.ndarray:
    """Probabilities through the serving path: an NHWC uint8 npy request body, decoded, preprocessed, predicted."""
    predictor = load(path)
    images = decode(npy(np.ascontiguousarray(inputs.transpose(0, 2, 3, 1))), NPY_TYPE, inputs.shape[1])
    return predictor.predict(predictor.preprocess(images))


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda d: d.name)
def test_predictions_match_mxnet(folder):
    inputs, probs, logits = _mxnet(folder)
    loaded = load_model(folder / "model.tar.gz")
    depth, c, h, w, classes = re.match(r"resnet(\d+)_(\d)x(\d+)x(\d+)_c(\d+)", folder.name).groups()
    assert (loaded.metadata["num_layers"], loaded.metadata["num_classes"], loaded.metadata["image_shape"]) == (
        int(depth), int(classes), [int(c), int(h), int(w)])
    assert loaded.metadata["format"] == "sagemaker-mxnet"
    assert loaded.hyperparameters["multi_label"] == ("1" if "multilabel" in folder.name else "0")
    with torch.no_grad():
        got = loaded.model(torch.from_numpy(inputs).float()).numpy()
    assert np.abs(got - logits).max() <= 1e-4 * max(1.0, np.abs(logits).max())
    served = _served(folder / "model.tar.gz", inputs)
    assert np.abs(served - probs).max() <= 1e-5
    assert (served.argmax(1) == probs.argmax(1)).all()


def test_endpoint_over_http_matches_mxnet(tmp_path):
    inputs, probs, _ = _mxnet(R20)
    proc, url = start_server(R20 / "model.tar.gz")
    try:
        status, body, _ = post(url + "/invocations", npy(np.ascontiguousarray(inputs.transpose(0, 2, 3, 1))),
                               NPY_TYPE, "application/json")
        img = inputs[3].transpose(1, 2, 0)
        status_png, body_png, _ = post(url + "/invocations", encode_image(img, ".png"), "application/x-image")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert status == 200 and status_png == 200
    assert np.abs(np.array(json.loads(body)).reshape(probs.shape) - probs).max() <= 1e-5
    assert np.abs(np.array(json.loads(body_png)) - probs[3]).max() <= 1e-5  # PNG is lossless: the same pixels


def test_sdk_model_deploys_a_sagemaker_artifact(tmp_path, monkeypatch):
    from openic.sagemaker.model import Model

    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    inputs, probs, _ = _mxnet(R20)
    predictor = Model(image_uri="image-classification", model_data=str(R20 / "model.tar.gz"), role="r").deploy(
        initial_instance_count=1, instance_type="ml.m5.xlarge", endpoint_name="mx-r20")
    try:
        out = predictor.predict(encode_image(inputs[5].transpose(1, 2, 0), ".png"),
                                initial_args={"ContentType": "application/x-image"})
    finally:
        predictor.delete_endpoint()
    assert np.abs(np.array(json.loads(out)) - probs[5]).max() <= 1e-5
    assert (tmp_path / "home" / "endpoints" / "mx-r20.log").is_file()  # not beside the read-only fixture
    with pytest.raises(ClientError, match="model_data"):
        Model(model_data=None)
    (tmp_path / "bad.tar.gz").write_bytes(b"junk")
    with pytest.raises(ClientError, match="bad.tar.gz"):
        Model(model_data=str(tmp_path / "bad.tar.gz")).deploy()


def test_transform_and_predict_cli(tmp_path, capsys):
    inputs, probs, _ = _mxnet(R20)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.npy").write_bytes(npy(np.ascontiguousarray(inputs[i].transpose(1, 2, 0))))
    assert main(["transform", "--model", str(R20 / "model.tar.gz"), "--input", str(src), "--output",
                 str(tmp_path / "out"), "--quiet"]) == 0
    for i in range(4):
        got = json.loads((tmp_path / "out" / f"{i}.npy.out").read_text())["prediction"]
        assert np.abs(np.array(got) - probs[i]).max() <= 1e-5
    png = tmp_path / "seven.png"
    png.write_bytes(encode_image(inputs[0].transpose(1, 2, 0), ".png"))
    capsys.readouterr()
    assert main(["predict", "--model", str(R20 / "model.tar.gz"), str(png), "--top-k", "1"]) == 0
    assert re.search(rf"\b{probs[0].argmax()}\b", capsys.readouterr().out)


def test_import_mxnet_cli_writes_an_equivalent_openic_artifact(tmp_path, capsys):
    out = tmp_path / "converted.tar.gz"
    assert main(["import-mxnet", str(R20 / "model.tar.gz"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    names = set(members(out))
    assert {"model.safetensors", "metadata.json", "hyperparameters.json", "model-shapes.json"} <= names
    assert not any(n.endswith((".params", "-symbol.json")) for n in names)
    meta = read_model_metadata(out)
    assert meta["format"] == "openic-model" and meta["imported_from"]["params"] == PARAMS
    assert meta["imported_from"]["source_md5"] == json.loads((R20 / "meta.json").read_text())["artifact_files"][
        "model.tar.gz"]
    inputs, probs, _ = _mxnet(R20)
    assert np.abs(_served(out, inputs) - probs).max() <= 1e-5
    assert main(["import-mxnet", str(out), "-o", str(tmp_path / "again.tar.gz")]) == 2
    assert "already an openic artifact" in capsys.readouterr().err
    assert main(["import-mxnet", str(R20 / "model.tar.gz"), "-o", str(tmp_path / "e.tar.gz"), "--epoch", "4"]) == 2
    assert "no checkpoint of epoch 4" in capsys.readouterr().err and not (tmp_path / "e.tar.gz").exists()
    assert main(["import-mxnet", str(tmp_path / "nope.tar.gz"), "-o", str(tmp_path / "n.tar.gz")]) == 2
    with pytest.raises(ClientError, match="is the SageMaker artifact being imported"):
        import_mxnet(out, out)


@pytest.fixture(scope="module")
def r20_files():
    return members(R20 / "model.tar.gz")


def _variant(tmp_path, files, **changes):
    """The ResNet-20 artifact with members replaced (bytes), added, or removed (None)."""
    new = {k: v for k, v in (files | changes).items() if v is not None}
    return write_tar(tmp_path / "variant.tar.gz", new)


def _params_with(arrays, **replace):
    return params_bytes({k: v for k, v in (arrays | replace).items() if v is not None})


def test_stored_bn_data_gamma_is_ignored(tmp_path, r20_files):
    arrays = fixture_arrays(R20 / "model.tar.gz")
    path = _variant(tmp_path, r20_files, **{PARAMS: _params_with(
        arrays, **{"arg:bn_data_gamma": np.full(3, 0.05, np.float32)})})
    inputs, probs, _ = _mxnet(R20)
    assert np.abs(_served(path, inputs) - probs).max() <= 1e-5
    assert torch.equal(load_model(path).model.bn_data.weight, torch.ones(3))


def test_highest_epoch_is_loaded_and_earlier_ones_on_request(tmp_path, r20_files):
    arrays = fixture_arrays(R20 / "model.tar.gz")
    later = _params_with(arrays, **{"arg:fc1_bias": arrays["arg:fc1_bias"] + np.arange(10, dtype=np.float32)})
    path = _variant(tmp_path, r20_files, **{"image-classification-0030.params": later})
    loaded = load_model(path)
    assert loaded.metadata["epoch"] == 29 and loaded.metadata["checkpoints"] == {
        "0": PARAMS, "29": "image-classification-0030.params"}
    assert torch.allclose(loaded.model.fc1.bias, torch.from_numpy(arrays["arg:fc1_bias"]) + torch.arange(10.0))
    assert torch.equal(load_model(path, checkpoint_epoch=0).model.fc1.bias, torch.from_numpy(arrays["arg:fc1_bias"]))
    with pytest.raises(ClientError, match=r"no checkpoint of epoch 3 .*epochs stored: \[0, 29\]"):
        load_model(path, checkpoint_epoch=3)


def _bad_cases(r20_files):
    arrays = fixture_arrays(R20 / "model.tar.gz")
    sym = json.loads(r20_files["image-classification-symbol.json"])
    yield "fc1 shape", {PARAMS: _params_with(arrays, **{"arg:fc1_weight": np.zeros((11, 64), np.float32)})}, \
        r"fc1_weight has shape \(11, 64\), but .* needs \(10, 64\)"
    yield "array missing", {PARAMS: _params_with(arrays, **{"aux:bn1_moving_var": None})}, \
        r"missing \(1\): bn1_moving_var"
    yield "array extra", {PARAMS: _params_with(arrays, **{"arg:fc2_weight": np.zeros(2, np.float32)})}, \
        r"unexpected \(1\): fc2_weight"
    yield "integer weights", {PARAMS: _params_with(arrays, **{"arg:fc1_bias": np.zeros(10, np.int32)})}, \
        r"fc1_bias is int32; expected floating-point"
    yield "gray shapes", {"model-shapes.json": b'[{"name": "data", "shape": [1, 1, 28, 28]}]'}, \
        r"the weights take 3-channel images \(conv0_weight \(16, 3, 3, 3\)\), but the image shape is 1,28,28"
    yield "big image", {"model-shapes.json": b'[{"name": "data", "shape": [1, 3, 64, 64]}]'}, \
        r"conv0 is 3x3, but images of height 64 take a 7x7 stem"
    yield "bad shapes", {"model-shapes.json": b'{"data": [1, 3]}'}, r"model-shapes.json is .*expected \["
    yield "no shapes", {"model-shapes.json": None}, r"model-shapes.json is missing"
    yield "no params", {PARAMS: None}, r"has no image-classification-NNNN.params beside it"
    yield "two symbols", {"other-symbol.json": b"{}"}, r"expected one MXNet \*-symbol.json, found 2"
    yield "truncated params", {PARAMS: r20_files[PARAMS][:-100]}, r"image-classification-0001.params: not a valid"
    yield "not json", {"image-classification-symbol.json": b"\x00{"}, r"symbol.json is not valid UTF-8 JSON"
    yield "bottleneck 164", {"image-classification-symbol.json": json.dumps({"nodes": [
        n for n in sym["nodes"]] + [{"op": "Convolution", "name": f"stage{s}_unit{u}_conv3", "attrs": {
            "num_filter": "64", "kernel": "(1, 1)"}} for s in (1, 2, 3) for u in (1, 2, 3)]}).encode()}, \
        r"bottleneck units \[3, 3, 3\] .* is not a depth openic builds"
    inception = {"nodes": [{"op": "null", "name": "data"}, {"op": "Convolution", "name": "conv_1", "attrs": {}},
                           {"op": "Concat", "name": "ch_concat_3a", "attrs": {}}]}
    yield "other family", {"image-classification-symbol.json": json.dumps(inception).encode()}, \
        r"not SageMaker's image-classification ResNet \(operators it never uses: Concat"


@pytest.mark.parametrize("case", [c[0] for c in _bad_cases({PARAMS: b"", "image-classification-symbol.json":
                                                            b'{"nodes": []}'})])
def test_damaged_or_foreign_artifacts_are_refused(tmp_path, r20_files, case):
    _, changes, match = next(c for c in _bad_cases(r20_files) if c[0] == case)
    path = _variant(tmp_path, r20_files, **changes)
    with pytest.raises(ClientError, match=match):
        load_model(path)
    assert main(["serve", "--model", str(path), "--port", "1"]) == 2  # refused before binding, one line


def test_truncated_archive_is_refused(tmp_path):
    data = (R20 / "model.tar.gz").read_bytes()
    for cut in (100, len(data) // 3, len(data) - 5000):  # (the last ~50 bytes are only the tar's zero padding)
        (tmp_path / "cut.tar.gz").write_bytes(data[:cut])
        with pytest.raises(ClientError, match="cut.tar.gz"):
            load_model(tmp_path / "cut.tar.gz")


@pytest.mark.parametrize("depth, shape, classes", [(18, (1, 32, 32), 4), (34, (3, 48, 64), 7), (50, (3, 64, 64), 3),
                                                   (110, (3, 28, 28), 2)])
def test_every_layout_maps_back(tmp_path, depth, shape, classes):
    """Checkpoints of other depths/stems/channels (written here from an openic model under MXNet's names) load
    as the same network: depth from the symbol, shape from model-shapes.json; an extracted folder works too."""
    folder = write_checkpoint(tmp_path / "m", "image-classification", 3, depth, classes, shape, seed=depth)
    x = torch.randint(0, 256, (2, *shape)).float()
    from_dir = load_model(folder)
    from_tar = load_model(tar_folder(folder, tmp_path / "m.tar.gz"))
    assert from_dir.metadata["num_layers"] == depth and from_dir.metadata["epoch"] == 2
    with torch.no_grad():
        assert torch.equal(from_dir.model(x), from_tar.model(x))


def _small_args(small, out, *extra):
    return ["train", "--train", str(small["train"]), "--validation", str(small["val"]), "--output-dir", str(out),
            "--num_training_samples", "96", "--num_layers", "20", "--image_shape", "3,28,28", "--num_classes", "10",
            "--mini_batch_size", "32", "--epochs", "1", *extra]


def _val_accuracy(out) -> float:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["validation:accuracy"] for r in rows if "validation:accuracy" in r][-1]


def test_fine_tune_an_imported_model_one_epoch(tmp_path, small, capsys):
    """The fixture was trained by MXNet on these digits: through the model channel, one epoch at a small learning
    rate keeps it accurate; the same epoch from scratch does not get there."""
    tuned = tmp_path / "tuned"
    assert main(_small_args(small, tuned, "--model", str(R20 / "model.tar.gz"), "--learning_rate", "0.001")) == 0
    assert "incremental" in capsys.readouterr().out.lower()
    scratch = tmp_path / "scratch"
    assert main(_small_args(small, scratch, "--learning_rate", "0.001")) == 0
    assert _val_accuracy(tuned) >= 0.8 > _val_accuracy(scratch) + 0.3
    assert read_model_metadata(tuned / "model.tar.gz")["format"] == "openic-model"
    bad = tmp_path / "bad"
    assert main(_small_args(small, bad, "--model", str(R20 / "model.tar.gz"), "--num_classes", "7")) == 2
    assert "num_classes" in (bad / "failure").read_text()


def test_model_channel_accepts_an_extracted_sagemaker_folder(tmp_path, small, r20_files):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in r20_files.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    assert main(_small_args(small, out, "--model", str(folder), "--learning_rate", "0.001")) == 0
    assert _val_accuracy(out) >= 0.8


def test_import_runs_in_a_fresh_interpreter_without_mxnet(tmp_path):
    code = ("import sys, openic.artifacts.model as m; m.load_model(sys.argv[1]); "
            "print('mxnet' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(R20 / "model.tar.gz")], capture_output=True, text=True,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip() == "False"


def test_symbol_helper_matches_the_fixture_symbol(r20_files):
    """The test-side symbol writer (used for other depths) says what MXNet's own file says about ResNet-20."""
    from openic.formats.mxnet_symbol import parse_symbol, resnet_graph

    ours = resnet_graph(parse_symbol(symbol(20, 10, 28), "ours"), "ours")
    theirs = resnet_graph(parse_symbol(json.loads(r20_files["image-classification-symbol.json"]), "mx"), "mx")
    assert ours == theirs


def test_import_refuses_to_overwrite_the_archive_of_a_folder(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "model.tar.gz").write_bytes((R20 / "model.tar.gz").read_bytes())
    with pytest.raises(ClientError, match="is the SageMaker artifact being imported"):
        import_mxnet(folder, folder / "model.tar.gz")
    assert (folder / "model.tar.gz").read_bytes() == (R20 / "model.tar.gz").read_bytes()


def test_derived_hyperparameters_win_over_a_stray_hyperparameters_json(tmp_path):
    multi = GENERATED / "resnet20_3x28x28_c6_multilabel" / "model.tar.gz"
    files = members(multi) | {"hyperparameters.json": b'{"epochs": "12", "multi_label": "0"}'}
    loaded = load_model(write_tar(tmp_path / "m.tar.gz", files))
    assert loaded.hyperparameters["multi_label"] == "1" and loaded.hyperparameters["epochs"] == "12"
    assert import_mxnet(tmp_path / "m.tar.gz", tmp_path / "o.tar.gz").is_file()
