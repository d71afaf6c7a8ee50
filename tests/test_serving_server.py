"""A real ``openic serve`` process on a free loopback port: a real HTTP client, boto3's ``sagemaker-runtime``
client through the Runtime API path, the container layout with a temporary ml-root, workers, start-up failures."""

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import urllib.request

import numpy as np
import pytest
from serving_helpers import CLASSES, SRC, jpeg, make_artifact, post, start_server

from openic.serving.handler import load


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(artifact):
    proc, url = start_server(artifact)
    yield url
    proc.terminate()
    proc.communicate(timeout=40)


def _direct(artifact, body: bytes) -> list[float]:
    p = load(artifact)
    from openic.serving.handler import decode

    return p.predict(p.preprocess(decode(body, "image/jpeg", 3)))[0].tolist()


def test_real_http_client(server, artifact):
    with urllib.request.urlopen(server + "/ping", timeout=5) as r:
        assert r.status == 200
    status, body, headers = post(server + "/invocations", jpeg(), "image/jpeg")
    assert status == 200 and headers["content-type"] == "application/json"
    np.testing.assert_allclose(json.loads(body), _direct(artifact, jpeg()), atol=1e-5)
    status, body, _ = post(server + "/invocations", b"junk", "text/plain")
    assert status == 415 and json.loads(body)["status"] == 415


def _runtime_client(endpoint_url: str | None = None):
    import boto3

    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    return session.client("sagemaker-runtime", endpoint_url=endpoint_url)


def test_boto3_invoke_endpoint_unchanged(server, artifact):
    client = _runtime_client(server)
    r = client.invoke_endpoint(EndpointName="image-classification-endpoint", ContentType="application/x-image",
                               Body=jpeg())
    assert r["ContentType"] == "application/json"
    np.testing.assert_allclose(json.loads(r["Body"].read()), _direct(artifact, jpeg()), atol=1e-5)
    r = client.invoke_endpoint(EndpointName="ep", ContentType="image/jpeg", Accept="application/jsonlines",
                               Body=jpeg())
    assert list(json.loads(r["Body"].read())) == ["prediction"]
    r = client.invoke_endpoint(EndpointName="ep", ContentType="image/jpeg", Accept="application/json; verbose=true",
                               CustomAttributes="preprocess=validation", Body=jpeg())
    assert json.loads(r["Body"].read())["predictions"][0]["class"] in CLASSES


def test_boto3_error_is_a_client_error_with_the_message(server):
    from botocore.exceptions import ClientError as BotoClientError

    with pytest.raises(BotoClientError) as info:
        _runtime_client(server).invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=b"1,2")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 415


def test_boto3_endpoint_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", server)
    r = _runtime_client().invoke_endpoint(EndpointName="ep", ContentType="image/jpeg", Body=jpeg())
    assert len(json.loads(r["Body"].read())) == len(CLASSES)


def test_container_layout_and_payload_limit_from_the_environment(tmp_path, artifact):
    model_dir = tmp_path / "ml" / "model"  # SageMaker extracts model.tar.gz here
    model_dir.mkdir(parents=True)
    with tarfile.open(artifact) as t:
        t.extractall(model_dir, filter="data")
    proc, url = start_server(None, env={"OPENIC_ML_ROOT": str(tmp_path / "ml"), "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    try:
        status, body, _ = post(url + "/invocations", jpeg(), "image/jpeg")
        assert status == 200 and len(json.loads(body)) == len(CLASSES)
        # only the headers and a first chunk are sent: the 413 comes from the declared length, unread body
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: %d\r\n\r\n" % (1024 * 1024 + 1) + b"\xff" * 1000)
            answer = b""
            while b"}" not in answer and (chunk := s.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"SAGEMAKER_MAX_PAYLOAD_IN_MB" in answer
        with urllib.request.urlopen(url + "/execution-parameters", timeout=5) as r:
            assert json.loads(r.read())["MaxPayloadInMB"] == 1
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=40)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert "Traceback" not in err


def test_two_workers_serve_and_share_metrics(artifact):
    proc, url = start_server(artifact, "--workers", "2")
    try:
        for _ in range(6):
            assert post(url + "/invocations", jpeg(), "image/jpeg")[0] == 200
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith('openic_requests_total{route="invocations",status="200"}'))
        assert float(line.split()[-1]) == 6  # summed over both workers, whichever answered
    finally:
        proc.terminate()
        proc.communicate(timeout=40)


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08 damaged", b"plain text"])
def test_damaged_model_fails_at_start_naming_the_file(tmp_path, content):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "openic", "serve", "--model", str(bad), "--port", "0"],
                       env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_missing_model_folder_names_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "openic", "serve", "--port", "0"],
                       env={**os.environ, "PYTHONPATH": SRC, "OPENIC_ML_ROOT": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(tmp_path / "model") in r.stderr
