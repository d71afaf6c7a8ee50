"""Random bytes and headers at /invocations: never a 5xx, every refusal a JSON error, the server keeps serving."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import image, jpeg, make_artifact, npy, png
from starlette.testclient import TestClient

from openic.serving.app import ServeConfig, create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(create_app(ServeConfig(model=str(make_artifact(tmp_path_factory.mktemp("fz"))),
                                           max_image_pixels=10**6))) as c:
        yield c


VALID = [jpeg(), png(), npy(image())]
TYPES = ["image/jpeg", "image/png", "application/x-image", "application/x-npy", "text/plain", "", "image/*",
         "application/x-npy; charset=utf-8", "IMAGE/JPEG"]
ACCEPTS = [None, "application/json", "application/jsonlines", "*/*", "text/html", "application/json;q=0",
           "application/json; verbose=true; top_k=abc", "application/json; verbose=yes; top_k=99999",
           "application/jsonlines;q=nan, application/json;q=0.5", ",,,", "application/json; top_k=-1"]
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


def _huge_jpeg() -> bytes:
    data = bytearray(jpeg())
    i = data.find(b"\xff\xc0")
    if i > 0:
        data[i + 5:i + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def _huge_png() -> bytes:
    data = bytearray(png())
    data[16:24] = struct.pack(">II", 2**31 - 1, 2**31 - 1)
    return bytes(data)


def _npy_header(shape: str, dtype: str = "|u1", fortran: str = "False") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': {fortran}, 'shape': {shape}, }}".encode()
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["random", "mutated", "truncated", "special"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    base = draw(st.sampled_from(VALID))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "mutated":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return draw(st.sampled_from([_huge_jpeg(), _huge_png(), _npy_header("(99999999, 99999999, 3)"),
                                 _npy_header("(2, 2, 3)", "<f8"), _npy_header("(2, 2, 3)", fortran="True"),
                                 _npy_header("()"), _npy_header("(-1, 2, 3)"), _npy_header("[1]"),
                                 _npy_header("(1, 1, 3)", "|O"), npy(np.zeros((2, 3, 3), np.uint8).T)]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(), content_type=st.one_of(st.sampled_from(TYPES), header_text),
       accept=st.one_of(st.sampled_from(ACCEPTS), header_text), preprocess=st.one_of(st.none(), header_text),
       custom=st.one_of(st.none(), header_text), path=st.sampled_from(["/invocations", "/endpoints/x/invocations"]))
def test_no_5xx_and_json_errors(client, body, content_type, accept, preprocess, custom, path):
    headers = {"Content-Type": content_type}
    for key, value in (("Accept", accept), ("X-Openic-Preprocess", preprocess),
                       ("X-Amzn-SageMaker-Custom-Attributes", custom)):
        if value is not None:
            headers[key] = value
    r = client.post(path, content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code == 200:
        if r.headers["content-type"].startswith("application/jsonlines"):
            rows = [json.loads(line)["prediction"] for line in r.text.splitlines()]
        else:
            answer = r.json()
            rows = [p["probabilities"] for p in answer["predictions"]] if isinstance(answer, dict) else answer
            rows = rows if isinstance(rows[0], list) else [rows]
        assert all(0 <= p <= 1 for row in rows for p in row)
    else:
        error = r.json()
        assert isinstance(error["error"], str) and error["status"] == r.status_code
    ok = client.post("/invocations", content=VALID[0], headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200
