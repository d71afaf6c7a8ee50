"""The ONNX Runtime backend: exported once, cached beside the artifact under its digest, equal to torch."""

import os

import numpy as np
import pytest
from serving_helpers import image, jpeg, make_artifact
from starlette.testclient import TestClient

import openic.serving.onnx_backend as onnx_backend
from openic.errors import ClientError
from openic.serving.app import ServeConfig, create_app
from openic.serving.handler import load


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("onnx"))


def test_onnx_equals_torch_within_1e_4(artifact):
    eager, fast = load(artifact), load(artifact, backend="onnx")
    assert fast.backend.name == "onnx"
    batch = eager.preprocess([image(20 + i, 30 - i, seed=i) for i in range(8)])
    np.testing.assert_allclose(fast.predict(batch), eager.predict(batch), atol=1e-4, rtol=0)
    np.testing.assert_allclose(fast.predict(batch[:1]), eager.predict(batch[:1]), atol=1e-4, rtol=0)


def test_cache_is_beside_the_artifact_and_reused(artifact):
    load(artifact, backend="onnx")
    cached = onnx_backend.cache_path(artifact)
    assert cached.parent == artifact.parent and cached.exists()
    before = cached.stat().st_mtime_ns
    load(artifact, backend="onnx")
    assert cached.stat().st_mtime_ns == before


def test_new_artifact_at_the_same_path_is_exported_again(tmp_path):
    first = onnx_backend.cache_path(make_artifact(tmp_path, seed=1))
    second = onnx_backend.cache_path(make_artifact(tmp_path, seed=2))
    assert first != second


def test_read_only_model_folder_caches_in_the_user_cache(tmp_path, monkeypatch, artifact):
    monkeypatch.setattr(onnx_backend.os, "access", lambda path, mode: False)  # root ignores chmod
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert onnx_backend.cache_path(artifact).parent == tmp_path / "cache" / "openic" / "onnx"


def test_damaged_cache_names_the_file(tmp_path):
    art = make_artifact(tmp_path, seed=3)
    cached = onnx_backend.cache_path(art)
    cached.write_bytes(b"not onnx")
    with pytest.raises(ClientError, match=f"{cached}.*delete it to re-export"):
        load(art, backend="onnx")
    os.remove(cached)
    assert load(art, backend="onnx").backend.name == "onnx"


def test_server_with_the_onnx_backend(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact), backend="onnx"))) as c:
        a = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    with TestClient(create_app(ServeConfig(model=str(artifact)))) as c:
        b = c.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    np.testing.assert_allclose(a, b, atol=1e-4)
