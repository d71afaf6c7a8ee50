"""The training child of ``Estimator.fit``: ``python -m openic.sdk.runner SPEC.json``.

With ``instance_count`` N > 1 it starts N host agents (``SPEC --host I PORT``), each running torchrun's launcher
over a worker (``SPEC --worker``) that runs the job contract as one rank; metrics reach MLflow when they finish.

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
from openic.storage import is_s3

log = logging.getLogger(__name__)

FAILURE_REASON_LIMIT = 1024  # SageMaker keeps the first 1024 characters of /opt/ml/output/failure


def _channels(spec: dict[str, Any]) -> dict[str, object]:
    from openic.data.pipe import make_channel
    from openic.data.sources import Channel
    from openic.storage.local import local_path  # s3:// channels: copied once into this host's cache (File mode)

    raw, modes = spec["channels"], spec.get("input_modes", {})
    out: dict[str, object] = {}
    for name in ("train", "validation"):
        out[name] = make_channel(name, raw[name], raw.get(f"{name}_lst"), modes.get(name))
    if raw.get("model"):
        out["model"] = Channel("model", local_path(raw["model"]))
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


def run(spec: dict[str, Any], spec_path: Path | None = None) -> int:
    from openic.train.job import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, JobResult

    name, out = spec["job_name"], local_output(spec)
    update_job(name, TrainingJobStatus="InProgress", TrainingStartTime=now(), Pid=os.getpid())
    tracker = job_tracker(name, spec)
    if tracker is not None:
        update_job(name, MlflowRunId=tracker.run_id, MlflowTrackingUri=tracking_uri(), MlflowExperiment=EXPERIMENT)
    hosts = int(spec.get("instance_count", 1))
    if hosts > 1 and spec_path is not None:
        code = run_hosts(spec_path, hosts, out, str(spec.get("run_options", {}).get("device", "cpu")))
        job = JobResult(code, result=_HostsResult(out / "model.tar.gz") if code == EXIT_OK else None,
                        failure=_failure_text(out) if code != EXIT_OK else None,
                        model_uri=f"{spec['output_dir']}/model.tar.gz" if is_s3(spec["output_dir"]) else None)
        _replay_metrics(out, tracker)
    else:
        job = _run_job(spec, out, tracker)
    charts = _charts(out) if job.exit_code == EXIT_OK else []
    status = {EXIT_OK: "Completed", EXIT_TERMINATED: "Stopped", EXIT_INTERRUPTED: "Stopped"}.get(job.exit_code,
                                                                                               "Failed")
    fields: dict[str, Any] = {"TrainingJobStatus": status, "TrainingEndTime": now(), "ExitCode": job.exit_code,
                              "FinalMetricDataList": final_metrics(out), "Charts": [str(c) for c in charts]}
    if job.exit_code == EXIT_OK and job.result is not None:
        fields["ModelArtifacts"] = {"S3ModelArtifacts": job.model_uri or str(job.result.model_path)}
    if status == "Failed":
        fields["FailureReason"] = (job.failure or f"exit code {job.exit_code}")[:FAILURE_REASON_LIMIT]
    update_job(name, **fields)
    if tracker is not None:
        tracker.finish(status, [*charts, *([job.result.model_path] if job.result is not None else [])])
    return job.exit_code


class _HostsResult:
    """What a multi-host job leaves for the job record: rank 0's artifact."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path


def run_hosts(spec_path: Path, hosts: int, out: Path, device: str = "cpu") -> int:
    """``instance_count`` hosts on this machine: one torchrun agent per host (node ranks 0..N-1, one process each,
    so ``mini_batch_size`` is per host as on SageMaker), all running this spec's job as workers; on GPU each host
    sees only its own GPU."""
    import signal
    import subprocess

    from openic.sdk.instances import host_environment
    from openic.train.launch import free_port

    port = str(free_port())
    agents = [subprocess.Popen([sys.executable, "-m", "openic.sdk.runner", str(spec_path), "--host", str(i), port],
                               env=host_environment(i, device)) for i in range(hosts)]

    def forward(signum: int, frame: object) -> None:  # a stopped job stops every host
        for agent in agents:
            if agent.poll() is None:
                agent.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [agent.wait() for agent in agents]
    finally:
        signal.signal(signal.SIGTERM, previous)
    return codes[0] or next((c for c in codes if c), 0)


def _host(spec_path: Path, spec: dict[str, Any], index: int, port: int) -> int:
    """One host's agent: torchrun's launcher starts this spec's worker as node ``index``."""
    from openic.train.launch import LaunchOptions, launch

    opts = LaunchOptions(nnodes=int(spec["instance_count"]), node_rank=index, master_port=port)
    return launch(opts, "openic.sdk.runner", [str(spec_path), "--worker"], output_dir=local_output(spec))


def _worker(spec: dict[str, Any]) -> int:
    """One rank of a multi-host job: the job contract alone (the top runner keeps the job record and tracking)."""
    from openic.train.job import leave_if_finished_peer

    return leave_if_finished_peer(_run_job(spec, local_output(spec), None).exit_code)


def _run_job(spec: dict[str, Any], out: Path, tracker: Any) -> Any:
    """The job contract on the spec's channels; a channel that cannot be fetched (S3) fails the job as a ClientError."""
    from openic.train.job import EXIT_CLIENT, check_output_dir, is_main_process, run_job, write_failure

    try:
        channels = _channels(spec)
    except ClientError as e:
        check_output_dir(out)
        return write_failure(out, EXIT_CLIENT, f"ClientError: {e}", write=is_main_process())
    return run_job(channels, {**spec.get("run_options", {}), "output_dir": spec["output_dir"]},
                   overrides=spec["hyperparameters"],
                   tracker=tracker)


def local_output(spec: dict[str, Any]) -> Path:
    """The job's output folder on this host: the folder itself, or the staging folder of an ``s3://`` one."""
    from openic.train.remote import RemoteOutputs

    return RemoteOutputs.plan(spec["output_dir"], None).output_dir


def _failure_text(out: Path) -> str | None:
    try:
        return (out / "failure").read_text(encoding="utf-8")
    except OSError:
        return None


def _replay_metrics(out: Path, tracker: Any) -> None:
    """Rank 0's ``metrics.jsonl`` into the job's MLflow run once the hosts are done (they do not track live)."""
    from openic.tracking import read_metrics

    if tracker is None:
        return
    try:
        records = read_metrics(out)
    except (ClientError, OSError):
        return
    for record in records:
        values = {k: v for k, v in record.items() if k not in ("epoch", "step", "time") and isinstance(v, int | float)}
        tracker.log_metrics(values, step=int(record.get("step") or 0), epoch=record["epoch"])
    tracker.close()


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
    args = list(argv if argv is not None else sys.argv[1:])
    spec_path = Path(args[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if args[1:2] == ["--worker"]:
        return _worker(spec)
    if args[1:2] == ["--host"]:
        return _host(spec_path, spec, int(args[2]), int(args[3]))
    return run(spec, spec_path)


if __name__ == "__main__":
    sys.exit(main())
