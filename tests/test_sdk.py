"""The SageMaker-shaped SDK end to end on tiny data: fit → artifacts, metrics, job store, MLflow → deploy →
predict → delete; v1 and v2 names; the openic.sagemaker names; failures and bad input before any work."""

import json
import os
import signal
import time
import warnings

import numpy as np
import pytest

from openic.cli import main
from openic.errors import ClientError
from openic.formats.recordio import RecordReader, unpack
from openic.sdk import Estimator, TrainingInput, UnexpectedStatusException
from openic.sdk import jobs as job_store

HP = {"num_layers": 20, "image_shape": "3,28,28", "num_classes": 10, "num_training_samples": 96,
      "mini_batch_size": 32, "epochs": 2, "learning_rate": 0.1}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _inputs(small):
    return {"train": TrainingInput(str(small["train"]), content_type="application/x-recordio"),
            "validation": TrainingInput(str(small["val"]), content_type="application/x-recordio")}


def _first_records(rec, n):
    with RecordReader(rec) as r:
        return [unpack(x) for _, x in zip(range(n), r, strict=False)]


@pytest.mark.slow
def test_fit_deploy_predict_delete(tmp_path, small, home, capsys):
    est = Estimator(role="r", instance_count=1, instance_type="ml.c5.xlarge", output_path=tmp_path / "out",
                    run_options={"log_every": 1, "seed": 3})
    est.set_hyperparameters(**HP)
    est.fit(_inputs(small), job_name="ic-job-1")
    log = capsys.readouterr().out
    assert "Epoch[1] Validation-accuracy=" in log  # the child's log lines are streamed
    assert est.model_data == str(tmp_path / "out" / "ic-job-1" / "output" / "model.tar.gz")
    d = job_store.load_job("ic-job-1")
    assert d["TrainingJobStatus"] == "Completed" and d["HyperParameters"]["num_layers"] == "20"
    names = {m["MetricName"] for m in d["FinalMetricDataList"]}
    assert {"train:accuracy", "validation:accuracy"} <= names
    assert (tmp_path / "out" / "ic-job-1" / "output" / "metrics.png").exists()

    predictor = est.deploy(initial_instance_count=1, instance_type="local")
    for _header, jpeg in _first_records(small["val"], 3):
        probs = json.loads(predictor.predict(jpeg, initial_args={"ContentType": "application/x-image"}))
        assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-5
    predictor.content_type = "application/x-image"  # the v1 attribute
    assert len(json.loads(predictor.predict(jpeg))) == 10
    predictor.delete_endpoint()
    with pytest.raises(ClientError, match="not running"):
        predictor.predict(jpeg)

    again = Estimator.attach("ic-job-1")
    assert again.model_data == est.model_data and again.hyperparameters()["epochs"] == "2"

    assert main(["jobs", "describe", "ic-job-1"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == est.model_data
    assert main(["jobs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == ["ic-job-1"]

    import mlflow  # every job is an MLflow run in the store under OPENIC_HOME

    client = mlflow.tracking.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("openic-image-classification")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.info.run_name == "ic-job-1" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "validation:accuracy")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value == pytest.approx(next(m["Value"] for m in d["FinalMetricDataList"]
                                                   if m["MetricName"] == "validation:accuracy"))
    assert client.get_metric_history(run.info.run_id, "batch/train:accuracy")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.png", "model.tar.gz"}


def test_v1_names_warn_and_work(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = Estimator("811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1", "role",
                        train_instance_count=1, train_instance_type="ml.p2.xlarge", train_volume_size=50,
                        train_max_run=3600, input_mode="File", output_path=str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert any("train_instance_count" in m and "instance_count" in m for m in messages)
    assert any("ml.p2.xlarge" in m and "CPU" in m for m in messages) or est.device == "cuda"
    assert est.max_run == 3600


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"instance_type": "ml.fake.huge"}, "ml.fake.huge"),
    ({"instance_type": "gpu"}, "'gpu'"),
    ({"instance_count": 0}, "instance_count 0"),
    ({"instance_count": 1000}, "instance_count 1000"),
    ({"image_uri": "xgboost:1"}, "image-classification"),
    ({"trian_instance_count": 1}, "trian_instance_count"),
    ({"input_mode": "Stream"}, "input_mode 'Stream' is not valid"),
])
def test_bad_estimator_arguments(kwargs, says):
    with pytest.raises(ClientError, match=says):
        Estimator(**kwargs)


def test_set_hyperparameters_is_checked_at_once():
    est = Estimator()
    with pytest.raises(ClientError, match="mini_batch_siz"):
        est.set_hyperparameters(mini_batch_siz=4)
    with pytest.raises(ClientError, match="num_layers"):
        est.set_hyperparameters(num_layers=19)
    est.set_hyperparameters(num_layers=18, use_pretrained_model=0)
    assert est.hyperparameters() == {"num_layers": "18", "use_pretrained_model": "0"}


@pytest.mark.parametrize(("inputs", "says"), [
    ({"train": "x", "validaton": "y"}, "validaton"),
    ({"train": "x"}, "'validation' channel is missing"),
    ({"train": TrainingInput("s3://Bad_Bucket/train"), "validation": "v"}, "train channel: .*Bad_Bucket"),
])
def test_bad_channels_fail_before_any_work(small, inputs, says, home):
    est = Estimator(hyperparameters=HP)
    with pytest.raises(ClientError, match=says):
        est.fit(inputs)
    assert not (home / "jobs").exists() or not list((home / "jobs").iterdir())


def test_content_type_that_disagrees_with_the_files(small, tmp_path):
    est = Estimator(hyperparameters=HP)
    with pytest.raises(ClientError, match="holds RecordIO"):
        est.fit({"train": TrainingInput(str(small["train"]), content_type="application/x-image"),
                 "validation": str(small["val"])})
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ClientError, match="no .rec file"):
        est.fit({"train": TrainingInput(str(tmp_path / "imgs"), content_type="application/x-recordio"),
                 "validation": str(small["val"])})
    with pytest.raises(ClientError, match="content_type 'text/csv'"):
        TrainingInput("x", content_type="text/csv")


def test_deploy_before_fit_and_missing_hyperparameters(small):
    with pytest.raises(ClientError, match="fit"):
        Estimator().deploy(1, "local")
    with pytest.raises(ClientError, match="num_training_samples"):
        Estimator(hyperparameters={"num_layers": 18}).fit(_inputs(small))


def test_failing_job_raises_with_the_reason_and_is_recorded(small, tmp_path, capsys):
    est = Estimator(hyperparameters=HP | {"mini_batch_size": 200}, output_path=tmp_path)  # > 96 images
    with pytest.raises(UnexpectedStatusException, match="ic-bad.*Failed.*mini_batch_size"):
        est.fit(_inputs(small), job_name="ic-bad", logs=False)
    d = job_store.load_job("ic-bad")
    assert d["TrainingJobStatus"] == "Failed" and d["FailureReason"].startswith("ClientError:")
    assert not (tmp_path / "ic-bad" / "output" / "model.tar.gz").exists()
    with pytest.raises(ClientError, match="already exists"):
        est.fit(_inputs(small), job_name="ic-bad")
    with pytest.raises(ClientError, match="Failed: it has no model"):
        Estimator.attach("ic-bad").deploy()


def test_killed_child_marks_the_job_failed(small, tmp_path):
    est = Estimator(hyperparameters=HP | {"epochs": 50}, output_path=tmp_path)
    est.fit(_inputs(small), job_name="ic-killed", wait=False)
    job = est.latest_training_job
    deadline = time.time() + 60
    while job_store.load_job("ic-killed").get("TrainingStartTime") is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(job.proc.pid, signal.SIGKILL)
    job.proc.wait(timeout=30)
    d = job.describe()
    assert d["TrainingJobStatus"] == "Failed" and "signal 9" in d["FailureReason"]
    assert not (tmp_path / "ic-killed" / "output" / "model.tar.gz").exists()
    with pytest.raises(UnexpectedStatusException, match="signal 9"):
        job.wait(logs=False)


def test_openic_sagemaker_names(tmp_path, home):
    from openic import sagemaker
    from openic.sagemaker.amazon.amazon_estimator import get_image_uri
    from openic.sagemaker.estimator import Estimator as SmEstimator
    from openic.sagemaker.inputs import TrainingInput as SmInput
    from openic.sagemaker.predictor import RealTimePredictor
    from openic.sagemaker.serializers import IdentitySerializer
    from openic.sagemaker.session import s3_input

    sess = sagemaker.Session()
    assert sess.boto_region_name and sess.default_bucket().startswith("sagemaker-")
    role = sagemaker.get_execution_role()
    uri = get_image_uri(sess.boto_region_name, "image-classification", repo_version="latest")
    assert uri == sagemaker.image_uris.retrieve("image-classification", sess.boto_region_name, "latest")
    est = SmEstimator(uri, role, train_instance_count=1, train_instance_type="local", sagemaker_session=sess)
    assert isinstance(est, Estimator)
    data = tmp_path / "train.rec"
    data.write_bytes(b"")
    where = sess.upload_data(path=str(data), bucket=sess.default_bucket(), key_prefix="ic/train")
    assert (home / "s3" / sess.default_bucket() / "ic" / "train" / "train.rec").exists() and where
    channel = s3_input(where, distribution="FullyReplicated", content_type="application/x-recordio",
                       s3_data_type="S3Prefix")
    assert isinstance(channel, SmInput) and channel.s3_data == where
    assert RealTimePredictor is sagemaker.Predictor
    assert IdentitySerializer("application/x-image").serialize(b"ab") == b"ab"
    with pytest.raises(ClientError, match="xgboost"):
        sagemaker.image_uris.retrieve("xgboost", "us-east-1")


def test_plot_several_jobs_on_one_chart(tmp_path, capsys):
    from openic.tracking import FileTracker

    for i, name in enumerate(("job-a", "job-b")):
        with FileTracker(tmp_path / name) as t:
            for epoch in range(3):
                t.log_metrics({"train:accuracy": 0.5 + 0.1 * epoch, "validation:accuracy": 0.4 + 0.1 * epoch + i / 20,
                               "epoch_time": 1.0}, step=epoch, epoch=epoch)
    assert main(["plot", str(tmp_path / "job-a"), str(tmp_path / "job-b"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "no-such-job"]) == 2
    assert "no training job named 'no-such-job'" in capsys.readouterr().err


def test_tracking_failure_never_fails_training(small, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    est = Estimator(hyperparameters=HP | {"epochs": 1}, output_path=tmp_path)
    est.fit(_inputs(small), job_name="ic-untracked", logs=False)
    assert job_store.load_job("ic-untracked")["TrainingJobStatus"] == "Completed"
    assert np.isfinite(next(m["Value"] for m in job_store.load_job("ic-untracked")["FinalMetricDataList"]))


def test_pipe_mode_needs_s3_channels(tmp_path):
    est = Estimator(role="r", instance_type="local", input_mode="Pipe", hyperparameters={
        "num_classes": 2, "num_training_samples": 4})
    (tmp_path / "t.rec").write_bytes(b"")
    with pytest.raises(ClientError, match="train channel: Pipe mode reads s3:// RecordIO"):
        est.fit({"train": str(tmp_path / "t.rec"), "validation": str(tmp_path / "t.rec")})
