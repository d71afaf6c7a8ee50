"""``openic demo``: the SageMaker image-classification workshop, offline, on scikit-learn's digits.

The same steps the workshop's notebook takes, through the same SDK calls: data → RecordIO → ``Estimator.fit``
(ResNet-18 with the workshop's hyperparameters, sized to a few minutes on 2 cores) → charts → ``deploy`` →
``predict`` on a handful of validation images (predicted vs true label) → ``delete_endpoint`` → where the
charts, the model and the MLflow run are, and how to open the UI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from openic.errors import ClientError
from openic.formats.recordio import RecordReader, unpack
from openic.sdk import jobs
from openic.sdk.estimator import Estimator
from openic.sdk.inputs import TrainingInput
from openic.train.job import DEMO_HYPERPARAMETERS, EXIT_OK, train_config

RECORDIO = "application/x-recordio"
MAX_SHOWN = 1000


def validation_samples(rec: Path, count: int) -> list[tuple[int, bytes]]:
    """``count`` (label, encoded image) pairs of a RecordIO file, taken evenly over its records (all classes)."""
    with RecordReader(rec) as reader:
        keys = reader.keys()
        step = max(1, len(keys) // count)
        out = []
        for key in keys[::step][:count]:
            header, payload = unpack(reader.read_key(key))
            label = header.label if header.flag == 0 else header.label[0]
            out.append((int(label), payload))
    return out


def run_workshop(root: Path, *, epochs: int | str = DEMO_HYPERPARAMETERS["epochs"], seed: int = 0,
                 show: int = 8) -> int:
    """Run the workshop end to end under ``root``; returns the process exit code (0 when predictions printed)."""
    from openic.prep.samples import make_digits

    if not 1 <= show <= MAX_SHOWN:
        raise ClientError(f"--show must be 1..{MAX_SHOWN}, got {show}")
    root = Path(root).resolve()
    train_config({"output_dir": root / "output", "seed": seed})  # a bad seed fails before any work
    est = Estimator(role="local", instance_count=1, instance_type="local", output_path=root / "output",
                    run_options={"seed": seed})
    est.set_hyperparameters(**(DEMO_HYPERPARAMETERS | {"epochs": str(epochs)}))
    info = make_digits(root / "data")
    print(info.summary(), flush=True)
    est.fit({"train": TrainingInput(str(info.train_rec), content_type=RECORDIO),
             "validation": TrainingInput(str(info.val_rec), content_type=RECORDIO)}, logs=True)
    job = est.latest_training_job.describe()  # Completed: fit raises UnexpectedStatusException otherwise
    predictor = est.deploy(initial_instance_count=1, instance_type="local")
    try:
        correct = _show_predictions(predictor, validation_samples(info.val_rec, show), info.classes)
    finally:
        predictor.delete_endpoint()
    print(f"endpoint {predictor.endpoint} deleted; {correct}/{show} of these validation images right")
    _where(job, est.model_data)
    return EXIT_OK


def _show_predictions(predictor, samples: list[tuple[int, bytes]], classes: tuple[str, ...]) -> int:
    print(f"predictions from endpoint {predictor.endpoint} ({predictor.url}/invocations):")
    correct = 0
    for i, (label, image) in enumerate(samples):
        probs = json.loads(predictor.predict(image, initial_args={"ContentType": "application/x-image"}))
        best = max(range(len(probs)), key=probs.__getitem__)
        correct += best == label
        mark = "ok" if best == label else "WRONG"
        print(f"  image {i}: predicted {classes[best]} (p={probs[best]:.3f}), true {classes[label]}  {mark}")
    return correct


def _where(job: dict, model_data: str) -> None:
    from openic.sdk.tracking import tracking_uri

    print(f"training job: {job['TrainingJobName']} (openic jobs describe {job['TrainingJobName']})")
    for chart in job.get("Charts", []):
        print(f"charts: {chart}")
    print(f"model: {model_data}")
    if job.get("MlflowRunId"):
        print(f"MLflow run: {job['MlflowRunId']} in {job.get('MlflowTrackingUri', tracking_uri())} "
              f"(experiment {job.get('MlflowExperiment')})")
        if os.environ.get("MLFLOW_TRACKING_URI"):
            print("open the run in your MLflow server's UI")
        else:
            print("open the MLflow UI with: openic ui  (then http://127.0.0.1:5000)")
    else:
        print("MLflow: this job was not tracked (pip install 'openic[mlflow]' to track jobs); charts above")
    print(f"job store: {jobs.jobs_dir()}")
