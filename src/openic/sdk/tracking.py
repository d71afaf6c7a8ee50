"""Every SDK job is an MLflow run, in one store that accumulates jobs.

The store is ``MLFLOW_TRACKING_URI`` when set (any MLflow server), else a SQLite file under ``OPENIC_HOME``
(``sqlite:///~/.openic/mlflow.db``, artifacts in ``~/.openic/mlartifacts``). mlflow is an optional extra: without
it, jobs still run and say once that they are not tracked. A tracking failure never fails a job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from openic.errors import ClientError
from openic.sdk.jobs import openic_home

log = logging.getLogger(__name__)

EXPERIMENT = "openic-image-classification"
_MLFLOW_STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED"}


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = openic_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root() -> str:
    return (openic_home() / "mlartifacts").as_uri()


class JobTracker:
    """The job's MLflow run: the loop's ``close`` only flushes; :meth:`finish` sets the job's real status."""

    def __init__(self, job_name: str, experiment: str = EXPERIMENT) -> None:
        from openic.tracking.mlflow import MlflowTracker, SafeTracker

        uri = tracking_uri()
        _ensure_experiment(uri, experiment)
        self.inner = MlflowTracker(experiment=experiment, run_name=job_name, tracking_uri=uri,
                                   tags={"openic.job": job_name})
        self.run_id = self.inner.run_id
        self.safe = SafeTracker(self.inner)

    def log_params(self, params: Any) -> None:
        self.safe.log_params(params)

    def log_metrics(self, metrics: Any, *, step: int, epoch: int) -> None:
        self.safe.log_metrics(metrics, step=step, epoch=epoch)

    def log_artifact(self, path: Path) -> None:
        self.safe.log_artifact(path)

    def close(self) -> None:
        self.safe._call("_send", self.inner._pending)
        self.inner._pending = []

    def finish(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.safe.log_artifact(path)
        self.safe.close(_MLFLOW_STATUS.get(status, "FAILED"))


def _ensure_experiment(uri: str, name: str) -> None:
    """Create the experiment with its artifacts under ``OPENIC_HOME`` (MLflow's default would be ``./mlruns``)."""
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is None:
        location = artifact_root() if uri.startswith("sqlite:") else None
        client.create_experiment(name, artifact_location=location)


def job_tracker(job_name: str, spec: dict[str, Any]) -> JobTracker | None:
    """The job's tracker, or ``None`` (said once) when MLflow is off, missing or unreachable."""
    if not spec.get("mlflow", True):
        return None
    try:
        return JobTracker(job_name)
    except ClientError as e:  # mlflow not installed
        log.warning("this job is not tracked in MLflow: %s", e)
    except Exception as e:  # noqa: BLE001 - a store that cannot be reached must not stop the job
        log.warning("this job is not tracked in MLflow (%s: %s); training goes on", type(e).__name__, e)
    return None
