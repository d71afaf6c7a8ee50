"""s3:// outputs and checkpoints against a real S3-protocol server (moto, 127.0.0.1): ``openic train
--output-dir s3://...`` lands model.tar.gz, metrics and checkpoints under the prefix, a rerun on a host with an
empty cache resumes from the S3 checkpoint, a failure file is uploaded, and the SDK's output_path on S3 gives
an s3:// model_data that deploys."""

import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import cut_rec

from openic.storage import client, list_objects
from openic.train.remote import RemoteOutputs, staging_dir

HP = ["--num_layers", "20", "--image_shape", "1,28,28", "--num_classes", "10", "--num_training_samples", "48",
      "--mini_batch_size", "16", "--seed", "1"]


@pytest.fixture
def data(digits_set, tmp_path):
    return (cut_rec(digits_set.train_rec, tmp_path / "train.rec", 0, 48),
            cut_rec(digits_set.val_rec, tmp_path / "val.rec", 0, 32))


def _train(data, out: str, cache, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ) | {"OPENIC_S3_CACHE": str(cache)} | (env or {})
    return subprocess.run([sys.executable, "-m", "openic", "train", "--train", str(data[0]), "--validation",
                           str(data[1]), "--output-dir", out, *HP, *extra], capture_output=True, text=True,
                          timeout=300, env=env)


def _keys(uri: str) -> set[str]:
    prefix = uri.split("/", 3)[3]
    return {o.key[len(prefix):] for o in list_objects(uri)}


def _epochs(s3, bucket: str, key: str) -> list[int]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line)["epoch"] for line in body.splitlines() if "validation:accuracy" in line]


@pytest.mark.slow
def test_s3_output_dir_lands_everything_and_a_fresh_host_resumes(s3_env, data, tmp_path):
    uri = f"s3://{s3_env}/jobs/run1/output"
    first = _train(data, uri, tmp_path / "cache1", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    keys = _keys(uri + "/")
    assert {"model.tar.gz", "metrics.jsonl", "metrics.csv", "checkpoints/last"} <= keys, keys
    assert not any(k.startswith(".openic") for k in keys)  # the lock stays local
    assert f"model: {uri}/model.tar.gz" in first.stdout
    s3 = client()
    s3.download_file(s3_env, "jobs/run1/output/model.tar.gz", str(tmp_path / "m.tar.gz"))
    with tarfile.open(tmp_path / "m.tar.gz") as tar:
        assert "model.safetensors" in tar.getnames()
    # another host (an empty cache) reruns the finished job: the checkpoint comes from S3, nothing is retrained
    second = _train(data, uri, tmp_path / "cache2", "--epochs", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    said = second.stdout + second.stderr
    assert "Resuming from" in said and "Nothing left to train" in said
    assert _epochs(s3, s3_env, "jobs/run1/output/metrics.jsonl") == [0]


def test_s3_checkpoint_dir_apart_from_a_local_output(s3_env, data, tmp_path):
    ckpt = f"s3://{s3_env}/ckpt/run2"
    proc = _train(data, str(tmp_path / "out"), tmp_path / "cache", "--epochs", "1", "--checkpoint-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "last" in _keys(ckpt + "/")
    assert (tmp_path / "out" / "model.tar.gz").exists()
    assert "model.tar.gz" not in _keys(ckpt + "/")  # only checkpoints went there


def test_failure_file_is_uploaded(s3_env, data, tmp_path):
    uri = f"s3://{s3_env}/jobs/bad/output"
    proc = _train(data, uri, tmp_path / "cache", "--epochs", "1", "--num_classes", "2")  # labels up to 9
    assert proc.returncode == 2
    body = client().get_object(Bucket=s3_env, Key="jobs/bad/output/failure")["Body"].read().decode()
    assert body.startswith("ClientError:") and "num_classes" in body


def test_output_leased_by_a_job_on_another_host_is_refused(s3_env, data, tmp_path):
    lease = {"owner": "x", "host": "algo-2", "pid": 77, "space": "another-machine/pid:[1]", "ttl_s": 600}
    client().put_object(Bucket=s3_env, Key="jobs/two/output/.openic-job.lock", Body=json.dumps(lease).encode())
    proc = _train(data, f"s3://{s3_env}/jobs/two/output", tmp_path / "cache", "--epochs", "1")
    assert proc.returncode == 2
    assert "another job (host algo-2, PID 77) holds its lease" in proc.stderr
    assert _keys(f"s3://{s3_env}/jobs/two/output/") == {".openic-job.lock"}  # nothing written beside theirs
    ckpt = f"s3://{s3_env}/jobs/two/output"  # the same prefix as another job's checkpoint location
    proc = _train(data, str(tmp_path / "out"), tmp_path / "cache", "--epochs", "1", "--checkpoint-dir", ckpt)
    assert proc.returncode == 2 and f"the checkpoint location {ckpt}: another job" in proc.stderr


def test_lease_on_one_prefix_for_output_and_checkpoints_survives_renewals_and_uploads(s3_env, data, tmp_path):
    """Output and checkpoints under one prefix take one lease; renewed every 0.25 s across two epochs of checkpoint
    uploads, it is never copied, overwritten or lost, and is gone when the job ends."""
    uri = f"s3://{s3_env}/jobs/same"
    proc = _train(data, uri, tmp_path / "cache", "--epochs", "2", "--checkpoint-dir", uri,
                  env={"OPENIC_S3_LEASE_TTL_S": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Lost the lease" not in proc.stdout + proc.stderr
    keys = _keys(uri + "/")
    assert "model.tar.gz" in keys and "last" in keys and not any(".openic" in k for k in keys), keys
    copies = [p for p in (tmp_path / "cache").rglob(".openic-job.lock*")]
    assert copies == []  # neither the local lock (released) nor a downloaded copy of the lease


def test_missing_output_bucket_fails_naming_it(s3_env, data, tmp_path):
    proc = _train(data, "s3://no-such-bucket-here/out", tmp_path / "cache", "--epochs", "1")
    assert proc.returncode == 2
    assert "no-such-bucket-here" in proc.stderr


def test_malformed_output_uri_is_a_usage_error(data, tmp_path):
    proc = _train(data, "s3://", tmp_path / "cache", "--epochs", "1")
    assert proc.returncode == 2
    assert "s3://" in proc.stderr


def test_staging_is_stable_and_distinct(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENIC_S3_CACHE", str(tmp_path))
    assert staging_dir("s3://bkt/a/out") == staging_dir("s3://bkt/a/out/")
    assert staging_dir("s3://bkt/a/out") != staging_dir("s3://bkt/a/out2")
    plan = RemoteOutputs.plan("s3://bkt/a/out", None)
    assert plan.remote and plan.output_dir == staging_dir("s3://bkt/a/out") and plan.checkpoint_dir is None
    assert not RemoteOutputs.plan(tmp_path / "x", None).remote
