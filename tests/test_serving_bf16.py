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
from openic.serving.batching import BatchOptions
from openic.serving.compiled import buckets
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


def test_buckets_cover_every_batch_within_twice_its_size():
    assert buckets(1) == [1] and buckets(4) == [1, 2, 4] and buckets(6) == [1, 2, 4, 6]
    for top in (1, 5, 32, 33):
        for n in range(1, top + 1):
            assert n <= next(b for b in buckets(top) if b >= n) < 2 * n
    with pytest.raises(ClientError, match="1..1024, got 0"):
        buckets(0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "torch-bf16"])
def test_compiled_backend_equals_the_eager_one_at_every_batch_size(artifact, backend, monkeypatch):
    eager, compiled = load(artifact, backend=backend), load(artifact, backend=backend, compile_batch=4)
    assert compiled.backend.name == f"{backend}+compiled" and compiled.backend.buckets == [1, 2, 4]
    assert compiled.batch_sizes == (1, 2, 4) and eager.batch_sizes == ()  # what the server's batcher cuts to
    calls = []
    run = compiled.backend._run
    monkeypatch.setattr(compiled.backend, "_run", lambda x: calls.append(len(x)) or run(x))
    batch = eager.preprocess([image(20 + i, 30 - i, seed=i) for i in range(7)])
    for n in (1, 3, 4, 7):  # 3 pads to 4; 7 is 4 + 3 (padded to 4)
        calls.clear()
        got, want = compiled.predict(batch[:n]), eager.predict(batch[:n])
        assert got.shape == want.shape == (n, 4)
        np.testing.assert_allclose(got, want, atol=1e-4 if backend == "torch" else 2e-2, rtol=0)
        assert calls == {1: [1], 3: [4], 4: [4], 7: [4, 4]}[n]


def test_compile_is_refused_for_onnx_and_a_compiler_failure_is_a_client_error(artifact, monkeypatch):
    with pytest.raises(ClientError, match="--compile applies to the torch backends, not onnx"):
        load(artifact, backend="onnx", compile_batch=2)

    def broken(model, **kwargs):
        def forward(x):
            raise RuntimeError("no working C++ compiler found")
        return forward

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ClientError, match=r"torch.compile failed for a batch of 1 \(RuntimeError: no working C\+\+ "
                                          r"compiler found\).*serve without --compile"):
        load(artifact, compile_batch=2)


@pytest.mark.slow
def test_a_compiled_endpoint_answers_as_the_eager_one(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact), compile=True,
                                           batch=BatchOptions(max_batch=2)))) as c:
        assert c.get("/ping").status_code == 200
        assert c.app.state.endpoint.batcher.sizes == [1, 2]  # the batcher cuts batches to the compiled buckets
        a = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    with TestClient(create_app(ServeConfig(model=str(artifact)))) as c:
        b = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    np.testing.assert_allclose(a, b, atol=1e-4)
