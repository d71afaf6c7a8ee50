"""The local job store: one JSON description per training job, shaped like SageMaker's DescribeTrainingJob.

``$OPENIC_HOME/jobs/<TrainingJobName>/job.json`` (``OPENIC_HOME`` defaults to ``~/.openic``; beside it the
child's ``spec.json`` and ``train.log``) holds
``TrainingJobName``, ``TrainingJobStatus`` (InProgress, Completed, Failed, Stopped), ``FailureReason``,
``HyperParameters``, ``CreationTime``/``TrainingStartTime``/``TrainingEndTime``, ``FinalMetricDataList``,
``ModelArtifacts.S3ModelArtifacts`` (a local path or ``s3://`` URI), the channels and the child's pid. Writes are
atomic; a job whose child died without saying so is marked Failed when it is next read.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from openic.errors import ClientError, shown
from openic.fileio import atomic_write_text, openic_home

STATUSES = ("InProgress", "Completed", "Failed", "Stopped")
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's TrainingJobName pattern, 1..63 chars
BASE_JOB_NAME = "image-classification"


def jobs_dir() -> Path:
    return openic_home() / "jobs"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def default_job_name(base: str = BASE_JOB_NAME) -> str:
    """SageMaker's form: ``BASE-YYYY-MM-DD-HH-MM-SS-mmm`` (UTC)."""
    t = dt.datetime.now(dt.timezone.utc)
    return f"{base}-{t:%Y-%m-%d-%H-%M-%S}-{t.microsecond // 1000:03d}"


def check_job_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ClientError(f"job name {shown(name)} is not valid: 1..63 letters, digits and hyphens, starting and "
                          "ending with a letter or digit (SageMaker's TrainingJobName rule)")
    return name


def job_dir(name: str) -> Path:
    return jobs_dir() / check_job_name(name)


def job_path(name: str) -> Path:
    return job_dir(name) / "job.json"


def create_job(description: dict[str, Any]) -> dict[str, Any]:
    """Record a new job; a name already used is refused (SageMaker: ResourceInUse)."""
    folder = job_dir(description["TrainingJobName"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # claims the name atomically
    except FileExistsError:
        raise ClientError(f"a training job named {description['TrainingJobName']!r} already exists ({folder}); "
                          "choose another job_name") from None
    save_job(description)
    return description


def save_job(description: dict[str, Any]) -> None:
    atomic_write_text(job_path(description["TrainingJobName"]), json.dumps(description, indent=2) + "\n")


def update_job(name: str, **fields: Any) -> dict[str, Any]:
    """Read, change and write a description under a lock, so the parent and the training child never lose
    each other's fields."""
    with open(job_dir(name) / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        description = load_job(name, refresh=False) | fields
        save_job(description)
    return description


def load_job(name: str, *, refresh: bool = True) -> dict[str, Any]:
    """A job's description; ``refresh`` marks an InProgress job whose process is gone as Failed."""
    path = job_path(name)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(p.parent.name for p in jobs_dir().glob("*/job.json"))[-5:]) or "none"
        raise ClientError(f"no training job named {name!r} in {jobs_dir()} (latest: {known})") from None
    except (OSError, ValueError) as e:
        raise ClientError(f"{path} is not a readable job description: {e}") from None
    if refresh and description.get("TrainingJobStatus") == "InProgress" and not _alive(description.get("Pid")):
        description = update_job(name, TrainingJobStatus="Failed", TrainingEndTime=now(),
                                 FailureReason="AlgorithmError: the training process ended without reporting a "
                                               "result (killed, or out of memory)")
    return description


def list_jobs() -> list[dict[str, Any]]:
    """Every job, newest first (by CreationTime)."""
    out = []
    for path in jobs_dir().glob("*/job.json"):
        try:
            out.append(load_job(path.parent.name))
        except ClientError:
            continue
    return sorted(out, key=lambda d: d.get("CreationTime", ""), reverse=True)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
