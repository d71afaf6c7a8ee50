"""The bfloat16 serving backend: weights cast once, answers within bfloat16's rounding of float32 (and of MXNet's
own outputs for a trained model), refused at load when the rounding would change them more than that."""

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from serving_helpers import image, jpeg, make_artifact
from starlette.testclient import TestClient

import openic.serving.handler as handler
from openic.cli import main
from openic.errors import ClientError
from openic.formats.images import encode_image
from openic.serving.app import ServeConfig, create_app
from openic.serving.handler import load

TRAINED = FIXTURES / "mxnet_models" / "resnet20_3x28x28_c10"  # trained by MXNet, with MXNet's probabilities


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("bf16"))


def test_a_trained_model_in_bf16_keeps_mxnets_answers():
    inputs, probs = np.load(TRAINED / "inputs.npy"), np.load(TRAINED / "probs.npy")
    predictor = load(TRAINED / "model.tar.gz", backend="torch-bf16")
    assert predictor.backend.name == "torch-bf16"
    assert next(predictor.backend.model.parameters()).dtype == torch.bfloat16  # cast once, not per call
    got = predictor.predict(torch.from_numpy(inputs))
    assert got.dtype == np.float64 and np.allclose(got.sum(1), 1.0)
    assert np.abs(got - probs).max() <= handler.BF16_TOLERANCE
    assert (got.argmax(1) == probs.argmax(1)).all()
    assert np.abs(got - probs).max() > 1e-6  # it really ran in bfloat16: float32 agrees within 1e-5


def test_batch_of_one_and_of_many_agree(artifact):
    predictor = load(artifact, backend="torch-bf16")
    batch = predictor.preprocess([image(20 + i, 30 - i, seed=i) for i in range(6)])
    many, one = predictor.predict(batch), predictor.predict(batch[:1])
    np.testing.assert_allclose(one[0], many[0], atol=1e-2)


def test_server_with_the_bf16_backend(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact), backend="torch-bf16"))) as c:
        a = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    with TestClient(create_app(ServeConfig(model=str(artifact)))) as c:
        b = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(a, b, atol=handler.BF16_TOLERANCE)


def test_a_model_bf16_would_change_is_refused_at_load(artifact, monkeypatch):
    monkeypatch.setattr(handler, "BF16_TOLERANCE", 0.0)
    with pytest.raises(ClientError, match=r"bfloat16 changes this model's probabilities by .* --backend torch or onnx"):
        load(artifact, backend="torch-bf16")


def test_an_unknown_backend_names_the_valid_ones(artifact):
    with pytest.raises(ClientError, match="torch, torch-bf16, onnx, got 'fp8'"):
        load(artifact, backend="fp8")


def test_predict_cli_takes_the_bf16_backend(artifact, tmp_path, capsys):
    path = tmp_path / "a.png"
    path.write_bytes(encode_image(image(16, 16, seed=3), ".png"))
    assert main(["predict", "--model", str(artifact), "--backend", "torch-bf16", str(path)]) == 0
    assert str(path) in capsys.readouterr().out
