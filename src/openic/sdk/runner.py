"""The training child of ``Estimator.fit``: ``python -m openic.sdk.runner SPEC.json``.

It runs the same job contract as ``openic train`` (:func:`openic.train.job.run_job`), then records the outcome in
the job store the way DescribeTrainingJob reports it, draws the charts into the job's output, and closes the
MLflow run. A tracking failure is logged and never fails the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from openic.errors import ClientError
from openic.sdk.jobs import now, update_job
from openic.sdk.tracking import EXPERIMENT, job_tracker, tracking_uri

log = logging.getLogger(__name__)

FAILURE_REASON_LIMIT = 1024  # SageMaker keeps the first 1024 characters of /opt/ml/output/failure


def _channels(spec: dict[str, Any]) -> dict[str, object]:
    from openic.data.sources import Channel

    raw = spec["channels"]
    out: dict[str, object] = {}
    for name in ("train", "validation"):
        lst = raw.get(f"{name}_lst")
        out[name] = Channel(name, Path(raw[name]), Path(lst) if lst else None)
    if raw.get("model"):
        out["model"] = Channel("model", Path(raw["model"]))
    return out


def final_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """DescribeTrainingJob's ``FinalMetricDataList`` from the last epoch in ``metrics.jsonl``."""
    from openic.tracking import per_epoch, read_metrics

    try:
        epochs = per_epoch(read_metrics(output_dir))
    except (ClientError, OSError):
        return []
    if not epochs:
        return []
    last = epochs[-1]
    return [{"MetricName": k, "Value": float(v), "Timestamp": last.get("time")} for k, v in sorted(last.items())
            if ":" in k and isinstance(v, int | float)]


def run(spec: dict[str, Any]) -> int:
    from openic.train.job import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, run_job

    name, out = spec["job_name"], Path(spec["output_dir"])
    update_job(name, TrainingJobStatus="InProgress", TrainingStartTime=now(), Pid=os.getpid())
    tracker = job_tracker(name, spec)
    if tracker is not None:
        update_job(name, MlflowRunId=tracker.run_id, MlflowTrackingUri=tracking_uri(), MlflowExperiment=EXPERIMENT)
    job = run_job(_channels(spec), {"output_dir": out, **spec.get("run_options", {})},
                  overrides=spec["hyperparameters"], tracker=tracker)
    charts = _charts(out) if job.exit_code == EXIT_OK else []
    status = {EXIT_OK: "Completed", EXIT_TERMINATED: "Stopped", EXIT_INTERRUPTED: "Stopped"}.get(job.exit_code,
                                                                                               "Failed")
    fields: dict[str, Any] = {"TrainingJobStatus": status, "TrainingEndTime": now(), "ExitCode": job.exit_code,
                              "FinalMetricDataList": final_metrics(out), "Charts": [str(c) for c in charts]}
    if job.exit_code == EXIT_OK and job.result is not None:
        fields["ModelArtifacts"] = {"S3ModelArtifacts": str(job.result.model_path)}
    if status == "Failed":
        fields["FailureReason"] = (job.failure or f"exit code {job.exit_code}")[:FAILURE_REASON_LIMIT]
    update_job(name, **fields)
    if tracker is not None:
        tracker.finish(status, [*charts, *([job.result.model_path] if job.result is not None else [])])
    return job.exit_code


def _charts(out: Path) -> list[Path]:
    try:
        from openic.tracking.charts import plot_run

        return [plot_run(out)]
    except (ClientError, OSError) as e:
        log.warning("no chart for %s: %s", out, e)
        return []


def main(argv: list[str] | None = None) -> int:
    from openic.logs import setup_logging

    setup_logging()
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text(encoding="utf-8"))
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
