"""s3:// channels in File mode against a real S3-protocol server (moto, 127.0.0.1): ``openic train`` and the SDK
train on the downloaded copy exactly as on the local files, and a missing key fails fast, naming it."""

import json
import subprocess
import sys
import uuid

import pytest
from conftest import cut_rec

from openic.formats.recordio import RecordReader, unpack
from openic.storage import client, list_objects

HP = ["--num_layers", "20", "--image_shape", "1,28,28", "--num_classes", "10", "--num_training_samples", "48",
      "--mini_batch_size", "16", "--epochs", "1", "--seed", "1"]


@pytest.fixture
def bucket_with_data(s3_env, digits_set, tmp_path):
    train = cut_rec(digits_set.train_rec, tmp_path / "train.rec", 0, 48)
    val = cut_rec(digits_set.val_rec, tmp_path / "val.rec", 0, 32)
    s3 = client()
    s3.upload_file(str(train), s3_env, "data/train/train.rec")
    s3.upload_file(str(val), s3_env, "data/validation/val.rec")
    return s3_env, train, val


def _train(train: str, val: str, out, env_cache, *extra: str) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ) | {"OPENIC_S3_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "openic", "train", "--train", train, "--validation", val,
                           "--output-dir", str(out), *HP, *extra], capture_output=True, text=True, timeout=300,
                          env=env)


def _val_accuracy(out) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["validation:accuracy"] for r in rows if "validation:accuracy" in r][-1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["File", "Pipe"])
def test_s3_channels_train_like_local_files(bucket_with_data, tmp_path, mode):
    """File mode copies the objects into the cache once; Pipe mode reads them from S3 and copies nothing."""
    bucket, train, val = bucket_with_data
    remote = _train(f"s3://{bucket}/data/train/", f"s3://{bucket}/data/validation/val.rec", tmp_path / "s3out",
                    tmp_path / "cache", "--input-mode", mode)
    assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-2000:]
    local = _train(str(train), str(val), tmp_path / "localout", tmp_path / "cache2")
    assert local.returncode == 0
    assert _val_accuracy(tmp_path / "s3out") == _val_accuracy(tmp_path / "localout")  # same batches, same result
    if mode == "File":
        assert (tmp_path / "cache" / bucket / "data" / "train" / "train.rec").read_bytes() == train.read_bytes()
    else:
        assert "in Pipe mode" in remote.stdout + remote.stderr
        assert not list((tmp_path / "cache").rglob("*.rec"))  # nothing copied


def test_missing_s3_key_is_a_client_error_naming_it(bucket_with_data, tmp_path):
    bucket, _, _ = bucket_with_data
    proc = _train(f"s3://{bucket}/nothing-here/", f"s3://{bucket}/data/validation/", tmp_path / "o",
                  tmp_path / "cache")
    assert proc.returncode == 2
    assert f"s3://{bucket}/nothing-here/" in proc.stderr


@pytest.mark.slow
def test_workshop_s3_cells_upload_then_fit(bucket_with_data, tmp_path, monkeypatch):
    """``Session().upload_data`` to the configured store, then ``fit`` on the returned s3:// locations."""
    from openic import sagemaker
    from openic.sdk import Estimator, TrainingInput

    _, train, val = bucket_with_data
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENIC_S3_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sess = sagemaker.Session()
    bucket = sess.default_bucket()
    (tmp_path / "tr").mkdir()
    (tmp_path / "tr" / "train.rec").write_bytes(train.read_bytes())
    prefix = f"ic-{uuid.uuid4().hex[:8]}"  # the default bucket outlives a test on the shared server
    s3_train = sess.upload_data(str(tmp_path / "tr"), bucket=bucket, key_prefix=f"{prefix}/train")
    s3_val = sess.upload_data(str(val), bucket=bucket, key_prefix=f"{prefix}/validation")
    assert s3_train.startswith("s3://") and s3_val.startswith("s3://")
    est = Estimator(role="r", instance_count=1, instance_type="local", output_path=f"s3://{bucket}/{prefix}/out",
                    checkpoint_s3_uri=f"s3://{bucket}/{prefix}/checkpoints")
    est.set_hyperparameters(num_layers=20, image_shape="1,28,28", num_classes=10, num_training_samples=48,
                            mini_batch_size=16, epochs=1)
    est.fit({"train": TrainingInput(s3_train, content_type="application/x-recordio"),
             "validation": TrainingInput(s3_val, content_type="application/x-recordio")}, logs=False)
    name = est.latest_training_job.name
    assert est.model_data == f"s3://{bucket}/{prefix}/out/{name}/output/model.tar.gz"
    keys = {o.key for o in list_objects(f"s3://{bucket}/{prefix}/")}
    assert f"{prefix}/out/{name}/output/model.tar.gz" in keys and f"{prefix}/checkpoints/last" in keys
    predictor = est.deploy(initial_instance_count=1, instance_type="local")  # from the s3:// artifact
    try:
        with RecordReader(val) as reader:
            jpeg = unpack(next(iter(reader)))[1]
        assert len(json.loads(predictor.predict(jpeg, initial_args={"ContentType": "application/x-image"}))) == 10
    finally:
        predictor.delete_endpoint()


def _pipe(train: str, val: str, out, env_cache, *extra: str) -> subprocess.CompletedProcess:
    return _train(train, val, out, env_cache, "--input-mode", "Pipe", *extra)


def test_pipe_source_reads_what_the_file_holds_by_ranged_gets_only(bucket_with_data):
    import torch
    from s3_helpers import gets

    from openic.data.loader import BatchStream, cache_images
    from openic.data.pipe import PipeRecordSource, pipe_uris
    from openic.data.sources import RecordSource
    from openic.data.transforms import Augmenter

    bucket, train, _ = bucket_with_data
    uris = pipe_uris(f"s3://{bucket}/data/train/")
    assert uris == [f"s3://{bucket}/data/train/train.rec"]
    pipe, local = PipeRecordSource(uris), RecordSource([train])
    assert len(pipe) == len(local) == 48 and (pipe.labels == local.labels).all()
    assert all(pipe.read(i) == local.read(i) for i in (0, 17, 47, 3))
    assert torch.equal(cache_images(pipe, 1, None, 4096, workers=2).images,
                       cache_images(local, 1, None, 4096).images)  # forked decoders open their own reader
    aug = Augmenter(None, (1, 28, 28), None)
    a = list(BatchStream(pipe, aug, 16, True, seed=3, workers=2))  # DataLoader workers: the source pickled
    b = list(BatchStream(local, aug, 16, True, seed=3, workers=2))
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True))
    ranges = gets(bucket, "data/train/train.rec")
    assert ranges and None not in ranges  # never one whole-object GET


def test_pipe_mode_errors_name_the_problem(bucket_with_data, tmp_path):
    bucket, train, val = bucket_with_data
    s3 = client()
    s3.put_object(Bucket=bucket, Key="imgs/a.jpg", Body=b"x")
    s3.put_object(Bucket=bucket, Key="cut/t.rec", Body=train.read_bytes()[:-10])
    cases = [(str(train), f"s3://{bucket}/data/validation/", "Pipe mode reads s3:// RecordIO"),
             (f"s3://{bucket}/imgs/", f"s3://{bucket}/data/validation/", "there is no .rec object here"),
             (f"s3://{bucket}/cut/t.rec", f"s3://{bucket}/data/validation/", f"s3://{bucket}/cut/t.rec: truncated")]
    for i, (tr, va, says) in enumerate(cases):
        out = tmp_path / f"o{i}"
        proc = _pipe(tr, va, out, tmp_path / "cache")
        text = proc.stderr + ((out / "failure").read_text() if (out / "failure").exists() else "")
        assert proc.returncode == 2 and says in text, (says, text[-1500:])
