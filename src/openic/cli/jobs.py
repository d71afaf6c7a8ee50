"""``openic jobs list|describe`` (SageMaker's ListTrainingJobs / DescribeTrainingJob) and ``openic ui`` (the
MLflow UI for the jobs' store)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("jobs", help="training jobs run through the SDK: list, describe")
    actions = j.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="one line per job, newest first (ListTrainingJobs)")
    ls.add_argument("--json", action="store_true", help="print ListTrainingJobs' JSON shape")
    ls.add_argument("--status", choices=("InProgress", "Completed", "Failed", "Stopped"), help="only these jobs")
    ls.set_defaults(func=run_list)
    d = actions.add_parser("describe", help="a job as DescribeTrainingJob answers (JSON)")
    d.add_argument("job", metavar="JOB", help="the job's name")
    d.set_defaults(func=run_describe)

    u = sub.add_parser("ui", help="the MLflow UI for the jobs' tracking store, on 127.0.0.1")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    u.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    u.set_defaults(func=run_ui)


def _summary(d: dict) -> dict:
    keys = ("TrainingJobName", "TrainingJobStatus", "CreationTime", "TrainingEndTime")
    return {k: d.get(k) for k in keys}


def run_list(args: argparse.Namespace) -> int:
    from openic.sdk.jobs import jobs_dir, list_jobs

    found = [d for d in list_jobs() if args.status in (None, d.get("TrainingJobStatus"))]
    if args.json:
        print(json.dumps({"TrainingJobSummaries": [_summary(d) for d in found]}, indent=2))
        return 0
    if not found:
        print(f"no training jobs in {jobs_dir()}")
        return 0
    for d in found:
        acc = next((m["Value"] for m in d.get("FinalMetricDataList", []) if m["MetricName"] ==
                    "validation:accuracy"), None)
        shown_acc = f"validation:accuracy={acc:.4f}" if acc is not None else ""
        print(f"{d['TrainingJobName']}  {d['TrainingJobStatus']:<10}  {d.get('CreationTime', '')}  {shown_acc}")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    from openic.sdk.jobs import load_job

    print(json.dumps(load_job(args.job), indent=2))
    return 0


def run_ui(args: argparse.Namespace) -> int:
    from openic.errors import ClientError
    from openic.sdk.tracking import tracking_uri

    if not 0 < args.port < 65536:
        raise ClientError(f"--port must be 1..65535, got {args.port}")
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise ClientError("openic ui needs mlflow: pip install 'openic[mlflow]'") from e
    uri = tracking_uri()
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # stopping openic ui stops the MLflow server
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
