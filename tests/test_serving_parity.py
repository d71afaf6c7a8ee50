"""Preprocessing parity (spec §10, aws/sagemaker-python-sdk#3229): with the validation switch on, the endpoint's
accuracy over the validation set equals the accuracy the training run logged; the default is SageMaker's squash."""

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from openic.cli import main
from openic.formats.recordio import RecordReader, unpack
from openic.serving.app import ServeConfig, create_app


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small):
    """ResNet-20 for one epoch on 96 digits (28x28 images) with image_shape 3,22,22 and resize 25: validation
    shrinks the shorter side to 25 and centre-crops 22x22, which SageMaker's endpoint would not do."""
    out = tmp_path_factory.mktemp("parity")
    rc = main(["train", "--train", str(small["train"]), "--validation", str(small["val"]), "--output-dir", str(out),
               "--num_training_samples", "96", "--num_layers", "20", "--image_shape", "3,22,22", "--resize", "25",
               "--num_classes", "10", "--mini_batch_size", "32", "--learning_rate", "0.1", "--epochs", "2"])
    assert rc == 0
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "validation:accuracy" in x]
    best = max(epochs, key=lambda r: r["validation:accuracy"])  # model.tar.gz holds the best epoch's weights
    return out / "model.tar.gz", best["validation:accuracy"]


def _accuracy(client, val_rec, headers) -> tuple[float, list]:
    right, answers = 0, []
    with RecordReader(val_rec) as reader:
        for record in reader:
            header, jpeg = unpack(record)
            r = client.post("/invocations", content=jpeg, headers={"Content-Type": "application/x-image", **headers})
            assert r.status_code == 200, r.text
            answers.append(r.json())
            right += int(np.argmax(r.json()) == int(header.label))
    return right / len(answers), answers


def test_validation_switch_reproduces_the_logged_accuracy(trained, small):
    model, logged = trained
    with TestClient(create_app(ServeConfig(model=str(model)))) as c:
        per_request, validation = _accuracy(c, small["val"], {"X-Openic-Preprocess": "validation"})
        boto_style, _ = _accuracy(c, small["val"], {"X-Amzn-SageMaker-Custom-Attributes": "preprocess=validation"})
        _, squashed = _accuracy(c, small["val"], {})
    assert per_request == boto_style == pytest.approx(logged, abs=1e-9)
    assert not np.allclose(validation, squashed)  # the default really is SageMaker's resize, not the crop
    with TestClient(create_app(ServeConfig(model=str(model), preprocess="validation"))) as c:  # the server flag
        assert _accuracy(c, small["val"], {})[0] == pytest.approx(logged, abs=1e-9)
