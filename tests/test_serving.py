"""The endpoint contract in-process (Starlette's TestClient runs the app with its lifespan): every content type x
Accept, every refusal, probabilities equal to a direct model call, the batching proof."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import torch
from serving_helpers import CLASSES, SHAPE, image, jpeg, make_artifact, npy, png
from starlette.testclient import TestClient

from openic.artifacts import load_model
from openic.data.transforms import inference_transform
from openic.errors import ClientError
from openic.formats.images import decode_image
from openic.serving.app import ServeConfig, create_app
from openic.serving.batching import Batcher, BatchOptions
from openic.serving.handler import Answer, encode, load, parse_accept


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def client(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact)))) as c:
        yield c


def _direct(artifact, img: np.ndarray, multi_label=False) -> np.ndarray:
    """What the model itself says: SageMaker's resize to HxW, then softmax (or sigmoid)."""
    model = load_model(artifact).model
    x = inference_transform(torch.from_numpy(img).permute(2, 0, 1), SHAPE).float()
    with torch.no_grad():
        logits = model(x)
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1)).numpy()


def test_ping(client):
    r = client.get("/ping")
    assert r.status_code == 200


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/x-image", "image/png", "application/x-npy"])
@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/jsonlines",
                                    "application/json; verbose=true"])
def test_every_content_type_and_accept(client, artifact, content_type, accept):
    body = {"image/png": png(), "application/x-npy": npy(image())}.get(content_type, jpeg())
    img = decode_image(body) if content_type != "application/x-npy" else image()
    want = _direct(artifact, img)[0]
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    r = client.post("/invocations", content=body, headers=headers)
    assert r.status_code == 200, r.text
    if accept == "application/jsonlines":
        assert r.headers["content-type"].startswith("application/jsonlines")
        lines = r.text.splitlines()
        assert len(lines) == 1
        got = json.loads(lines[0])["prediction"]
    elif accept and "verbose" in accept:
        pred = r.json()["predictions"][0]
        got = pred["probabilities"]
        assert pred["label"] == int(np.argmax(want)) and pred["class"] == CLASSES[pred["label"]]
        assert [t["class"] for t in pred["top_k"]] == [CLASSES[i] for i in np.argsort(-want)]
    else:
        assert r.headers["content-type"] == "application/json"
        got = r.json()
        assert isinstance(got, list) and all(isinstance(p, float) for p in got)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(got) == len(CLASSES) and abs(sum(got) - 1) < 1e-5


def test_runtime_api_path_answers_like_invocations(client):
    a = client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    b = client.post("/endpoints/my-endpoint/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert a.status_code == b.status_code == 200 and a.json() == b.json()


def test_npy_batch_gives_one_row_per_image(client, artifact):
    batch = np.stack([image(seed=i) for i in range(3)])
    r = client.post("/invocations", content=npy(batch), headers={"Content-Type": "application/x-npy",
                                                                "Accept": "application/jsonlines"})
    rows = [json.loads(x)["prediction"] for x in r.text.splitlines()]
    want = np.concatenate([_direct(artifact, batch[i]) for i in range(3)])
    np.testing.assert_allclose(rows, want, atol=1e-5)
    r = client.post("/invocations", content=npy(batch), headers={"Content-Type": "application/x-npy"})
    np.testing.assert_allclose(r.json(), want, atol=1e-5)


def test_verbose_top_k(client):
    r = client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg",
                                                            "Accept": "application/json; verbose=true; top_k=2"})
    assert len(r.json()["predictions"][0]["top_k"]) == 2


@pytest.mark.parametrize(("headers", "body", "status", "says"), [
    ({"Content-Type": "text/csv"}, b"1,2", 415, "text/csv"),
    ({}, b"x", 415, "(none)"),
    ({"Content-Type": "image/jpeg", "Accept": "text/html"}, None, 406, "text/html"),
    ({"Content-Type": "image/jpeg", "Accept": "application/json; verbose=true; top_k=0"}, None, 406, "top_k"),
    ({"Content-Type": "image/jpeg"}, b"", 400, "empty"),
    ({"Content-Type": "image/jpeg"}, b"not an image at all", 400, "not a decodable"),
    ({"Content-Type": "image/png"}, jpeg()[:40], 400, "not a decodable"),
    ({"Content-Type": "application/x-npy"}, b"\x93NUMPY garbage", 400, "npy"),
    ({"Content-Type": "application/x-npy"}, npy(np.zeros((4, 4, 3), np.float32)), 400, "uint8"),
    ({"Content-Type": "application/x-npy"}, npy(np.zeros((4, 4, 2), np.uint8)), 400, "HxWx3"),
    ({"Content-Type": "application/x-npy"}, npy(np.zeros((4,), np.uint8)), 400, "shape"),
    ({"Content-Type": "application/x-npy"}, npy(np.zeros((300, 2, 2, 3), np.uint8)), 400, "300 images"),
    ({"Content-Type": "application/x-npy"}, npy(np.zeros((4, 4, 3), np.uint8))[:-5], 400, "bytes of pixels"),
    ({"Content-Type": "image/jpeg", "X-Openic-Preprocess": "squash"}, None, 400, "squash"),
])
def test_refusals_are_json_and_the_server_keeps_serving(client, headers, body, status, says):
    r = client.post("/invocations", content=jpeg() if body is None else body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and says in r.json()["error"]
    assert client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_declared_dimensions_over_the_pixel_limit_are_refused_before_decoding(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact), max_image_pixels=100))) as c:
        r = c.post("/invocations", content=jpeg(20, 24), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400 and "24x20" in r.json()["error"]
        big = npy(np.zeros((20, 24, 3), np.uint8))
        r = c.post("/invocations", content=big, headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 400 and "limit" in r.json()["error"]


def test_body_over_the_payload_limit_is_413(artifact):
    with TestClient(create_app(ServeConfig(model=str(artifact), max_payload_mb=0.001))) as c:
        r = c.post("/invocations", content=b"\xff" * 2000, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: refused once the stream passes the limit
            for _ in range(100):
                yield b"\xff" * 100

        r = c.post("/invocations", content=chunks(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 413


def test_grayscale_model_takes_colour_and_gray_images(tmp_path):
    art = make_artifact(tmp_path, shape=(1, 16, 16))
    with TestClient(create_app(ServeConfig(model=str(art)))) as c:
        for body, ct in ((jpeg(), "image/jpeg"), (png(channels=1), "image/png"),
                         (npy(image(channels=1)[..., 0]), "application/x-npy")):
            r = c.post("/invocations", content=body, headers={"Content-Type": ct})
            assert r.status_code == 200 and len(r.json()) == len(CLASSES), r.text


def test_multi_label_gives_independent_probabilities(tmp_path):
    art = make_artifact(tmp_path, multi_label=True)
    with TestClient(create_app(ServeConfig(model=str(art)))) as c:
        r = c.post("/invocations", content=npy(image()), headers={"Content-Type": "application/x-npy",
                                                                 "Accept": "application/json; verbose=true"})
        pred = r.json()["predictions"][0]
    np.testing.assert_allclose(pred["probabilities"], _direct(art, image(), multi_label=True)[0], atol=1e-5)
    assert pred["labels"] == [i for i, p in enumerate(pred["probabilities"]) if p >= 0.5]


def test_metrics_and_execution_parameters(client):
    client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    client.post("/invocations", content=b"x", headers={"Content-Type": "text/plain"})
    text = client.get("/metrics").text
    assert 'openic_requests_total{route="invocations",status="200"}' in text
    assert 'openic_requests_total{route="invocations",status="415"}' in text
    assert "openic_request_latency_seconds_bucket" in text and "openic_batch_size_bucket" in text
    assert "openic_queue_depth" in text
    params = client.get("/execution-parameters").json()
    assert params == {"MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}


def _counting(predictor):
    """``predictor.predict`` that records the size of every forward pass."""
    calls = []

    def predict(batch):
        calls.append(int(batch.shape[0]))
        return predictor.predict(batch)

    return predict, calls


def test_concurrent_requests_run_as_one_forward(artifact):
    predictor = load(artifact)
    predict, calls = _counting(predictor)

    async def main():
        batcher = Batcher(predict, BatchOptions(max_batch=8, max_wait_ms=200))
        batcher.start()
        xs = [predictor.preprocess([image(seed=i)]) for i in range(5)]
        out = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.stop()
        return xs, out

    xs, out = asyncio.run(main())
    assert calls == [5]  # five concurrent requests, one forward pass
    for x, got in zip(xs, out, strict=True):
        np.testing.assert_allclose(got, predictor.predict(x), atol=1e-5)


def test_a_batch_between_two_backend_sizes_is_cut_to_the_lower_and_the_rest_runs_next(artifact):
    predictor = load(artifact)
    predict, calls = _counting(predictor)

    async def main():
        batcher = Batcher(predict, BatchOptions(max_batch=8, max_wait_ms=200), sizes=(1, 2, 4, 8))
        batcher.start()
        xs = [predictor.preprocess([image(seed=i)]) for i in range(7)]
        out = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.stop()
        return xs, out

    xs, out = asyncio.run(main())
    assert calls == [4, 2, 1]  # 7 queued: 4 run, then 2 of the 3 cut off, then the last; no padding
    for x, got in zip(xs, out, strict=True):  # every request got its own rows back, in its order
        np.testing.assert_allclose(got, predictor.predict(x), atol=1e-5)


def test_the_cut_keeps_arrival_order_and_never_drops_the_first_request(artifact):
    predictor = load(artifact)
    predict, calls = _counting(predictor)

    async def main():
        batcher = Batcher(predict, BatchOptions(max_batch=8, max_wait_ms=200), sizes=(2, 8))
        batcher.start()
        xs = [predictor.preprocess([image(seed=i)] * n) for i, n in enumerate((3, 1, 1, 1))]
        out = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.stop()
        return xs, out

    xs, out = asyncio.run(main())
    assert calls == [3, 2, 1]  # 6 images cut to size 2: the 3-image request runs alone (a request is never split)
    for x, got in zip(xs, out, strict=True):
        np.testing.assert_allclose(got, predictor.predict(x), atol=1e-5)


def test_a_lone_request_does_not_wait_for_company_but_an_announced_one_is_waited_for(artifact):
    predictor = load(artifact)
    predict, calls = _counting(predictor)

    async def main():
        batcher = Batcher(predict, BatchOptions(max_batch=8, max_wait_ms=2000))
        batcher.start()
        x = predictor.preprocess([image()])
        tic = time.perf_counter()
        await batcher.submit(x)  # nothing else on its way: no 2 s wait
        lone = time.perf_counter() - tic

        async def late():
            with batcher.incoming():  # read and decoded while the first one waits
                await asyncio.sleep(0.3)
                return await batcher.submit(x)

        both = await asyncio.gather(batcher.submit(x), late())
        await batcher.stop()
        return lone, both

    lone, both = asyncio.run(main())
    assert lone < 1.0 and calls == [1, 2] and len(both) == 2


def test_full_queue_is_503_not_unbounded(artifact):
    predictor = load(artifact)
    release = threading.Event()

    def slow(batch):
        release.wait(10)
        return predictor.predict(batch)

    async def main():
        batcher = Batcher(slow, BatchOptions(max_batch=1, max_wait_ms=0, max_queue=2))
        batcher.start()
        x = predictor.preprocess([image()])
        asyncio.get_running_loop().call_later(0.3, release.set)
        done = await asyncio.gather(*(batcher.submit(x) for _ in range(6)), return_exceptions=True)
        await batcher.stop()
        return done

    done = asyncio.run(main())
    refused = [d for d in done if isinstance(d, ClientError)]
    assert len(refused) == 4 and all(d.status == 503 and "busy" in str(d) for d in refused)
    assert sum(isinstance(d, np.ndarray) for d in done) == 2


def test_accept_negotiation():
    assert parse_accept("text/html;q=0.9, application/jsonlines", 4).media_type == "application/jsonlines"
    assert parse_accept("application/jsonlines;q=0.1, application/json", 4).media_type == "application/json"
    assert parse_accept(None, 4) == Answer(top_k=4)  # top-k capped at num_classes
    assert parse_accept("application/*", 4).media_type == "application/json"


def test_encode_shapes():
    probs = np.array([[0.25, 0.75]])
    assert encode(probs, Answer()) == b"[0.25, 0.75]"
    assert encode(np.vstack([probs, probs]), Answer("application/jsonlines")).count(b"\n") == 2


def test_corrupt_model_fails_at_start_naming_the_file(tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ClientError, match=str(bad)):
        load(bad)
    with pytest.raises(ClientError, match=str(bad)), TestClient(create_app(ServeConfig(model=str(bad)))):
        pass


def test_predict_cli_prints_top_k_with_class_names(tmp_path, artifact, capsys):
    from openic.cli import main

    good, bad = tmp_path / "a.jpg", tmp_path / "b.jpg"
    good.write_bytes(jpeg())
    bad.write_bytes(b"nope")
    assert main(["predict", "--model", str(artifact), "--top-k", "2", str(good)]) == 0
    line = capsys.readouterr().out.strip()
    want = load(artifact)
    probs = want.predict(want.preprocess([decode_image(jpeg())]))[0]
    best = CLASSES[int(np.argmax(probs))]
    assert line.startswith(f"{good}: {best}=") and line.count("=") == 2
    assert main(["predict", "--model", str(artifact), str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: error:" in captured.err and str(good) in captured.out
