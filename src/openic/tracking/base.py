"""The Tracker protocol (mlflow's verbs) and the default file backend that charts and ``openic runs`` read.

``metrics.jsonl`` holds one JSON object per ``log_metrics`` call: ``{"epoch", "step", "time", ...metrics}`` with
SageMaker's metric names (``train:accuracy``, ``validation:accuracy``, ``train:top_k_accuracy_5``, ``train:loss``,
``learning_rate``, ``samples_per_sec``). ``epoch`` is 0-based as in MXNet's ``Epoch[k]`` log lines, ``time`` is
Unix seconds, and a value that is not finite (a diverged loss) is written as ``null`` so the file stays strict JSON.
Several lines may share an epoch (per-batch windows, then the epoch summary); readers take the last value of each
metric within an epoch as that epoch's value.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from openic.errors import DataError
from openic.fileio import atomic_write_text

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PARAMS_JSON = "params.json"
_RESERVED = ("epoch", "step", "time")


@runtime_checkable
class Tracker(Protocol):
    """Where a training run reports to; the loop holds one and never knows which backend it is."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def close(self) -> None: ...


def metric_record(metrics: Mapping[str, float], *, step: int, epoch: int) -> dict[str, Any]:
    """The JSON line for one ``log_metrics`` call; raises on reserved names or values that are not numbers."""
    record: dict[str, Any] = {"epoch": int(epoch), "step": int(step), "time": round(time.time(), 3)}
    for name, value in metrics.items():
        if name in _RESERVED:
            raise ValueError(f"metric name {name!r} is reserved (reserved: {', '.join(_RESERVED)})")
        try:
            number = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metric {name!r} must be a number, got {value!r}") from e
        record[name] = number if math.isfinite(number) else None
    return record


def metrics_path(run: Path) -> Path:
    """``run/metrics.jsonl`` for a run directory, or ``run`` itself when it is the jsonl file."""
    run = Path(run)
    path = run / METRICS_JSONL if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_JSONL} at {path}" + (" (is this a run directory?)" if run.is_dir()
                                                                        else ""))
    return path


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """All records of a run directory or ``metrics.jsonl``, in file order.

    A torn last line (the writer was killed mid-line) is skipped with a warning; a bad line elsewhere is an error.
    """
    path = metrics_path(run)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if number == len(lines):
                logger.warning("%s:%d: skipping a torn last line (%s)", path, number, e)
                continue
            raise DataError(f"{path}:{number}: not a JSON object ({e}): {line[:80]!r}") from e
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise DataError(f"{path}:{number}: expected an object with an integer 'epoch', got {line[:80]!r}")
        records.append(record)
    return records


def per_epoch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch, in order of first appearance: the last non-null value of each key within the epoch."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        row = rows.setdefault(record["epoch"], {})
        row.update({k: v for k, v in record.items() if v is not None})
    return list(rows.values())


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    """A spreadsheet view of the records: epoch, step, time, then every metric in order of first appearance."""
    columns = list(_RESERVED)
    for record in records:
        columns += [k for k in record if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


class FileTracker:
    """Append-only ``metrics.jsonl`` (flushed per line, so a crash loses nothing), ``metrics.csv``, ``params.json``.

    Args:
        out_dir: the run's output directory.
        resume_from_epoch: the last epoch a resumed run had completed; lines of later epochs (logged after that
            checkpoint) are dropped so the resumed run does not repeat them. ``None`` starts a new log.
    """

    def __init__(self, out_dir: Path, *, resume_from_epoch: int | None = None) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_JSONL
        self._params: dict[str, Any] = {}
        if self.path.exists():
            kept = [] if resume_from_epoch is None else [
                r for r in read_metrics(self.path) if r["epoch"] <= resume_from_epoch]
            if resume_from_epoch is None:
                logger.warning("%s exists; starting a new metrics log (pass resume_from_epoch to continue it)",
                               self.path)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file: io.TextIOWrapper | None = open(self.path, "a", encoding="utf-8")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params.update(params)
        text = json.dumps(self._params, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write_text(self.dir / PARAMS_JSON, text)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        if self._file is None:
            raise RuntimeError(f"FileTracker for {self.dir} is closed")
        self._file.write(json.dumps(metric_record(metrics, step=step, epoch=epoch), allow_nan=False) + "\n")
        self._file.flush()

    def log_artifact(self, path: Path) -> None:
        """Copy a file or directory into ``out_dir/artifacts`` unless it already lies inside ``out_dir``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact not found: {path}")
        if path.resolve().is_relative_to(self.dir.resolve()):
            return
        dest = self.dir / "artifacts" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(path, dest)

    def close(self) -> None:
        """Close the log and write ``metrics.csv`` from it; calling it again does nothing."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        write_csv(read_metrics(self.path), self.dir / METRICS_CSV)

    def __enter__(self) -> FileTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullTracker:
    """Records nothing: for non-main ranks, so only rank 0 writes files."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        return None

    def log_artifact(self, path: Path) -> None:
        return None

    def close(self) -> None:
        return None


class MultiTracker:
    """Sends every call to several trackers (for example the file log and mlflow)."""

    def __init__(self, *trackers: Tracker) -> None:
        self.trackers = trackers

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step=step, epoch=epoch)

    def log_artifact(self, path: Path) -> None:
        for t in self.trackers:
            t.log_artifact(path)

    def close(self) -> None:
        """Close every tracker even if one fails; the first failure is raised afterwards."""
        first: BaseException | None = None
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # re-raised below, once the others are closed
                logger.error("closing %s failed: %s", type(t).__name__, e)
                first = first or e
        if first is not None:
            raise first
