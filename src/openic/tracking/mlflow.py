"""An mlflow backend for the Tracker protocol; mlflow is an optional extra, imported only when one is created.

It talks to mlflow through an explicit ``MlflowClient`` and run id rather than mlflow's global active run, so it
can sit beside other trackers (``MultiTracker``) without touching process-wide state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openic.errors import ClientError

logger = logging.getLogger(__name__)

_PARAMS_PER_CALL = 100  # mlflow's log-batch limit for params (metrics: 1000)
_METRICS_PER_CALL = 1000
_PARAM_VALUE_LIMIT = 500  # the smallest limit across mlflow versions (newer servers allow 6000)
EPOCH_MARKER = "epoch_time"  # the training loop's per-epoch record carries it; per-batch records do not


def _import_mlflow() -> Any:
    try:
        import mlflow
        import mlflow.entities
        import mlflow.tracking
    except ImportError as e:
        raise ClientError(f"the mlflow tracker needs mlflow, which is not installed ({e}); "
                          "install it with: pip install openic[mlflow]") from e
    return mlflow


class MlflowTracker:
    """Log params, metrics and artifacts of one training run to an mlflow tracking server or local ``mlruns``.

    Args:
        experiment: experiment name, created when missing.
        run_name: shown in the mlflow UI; mlflow picks one when ``None``.
        tracking_uri: for example ``http://localhost:5000`` or ``file:./mlruns``; ``None`` uses mlflow's default
            (the ``MLFLOW_TRACKING_URI`` environment variable, else ``./mlruns``).
        tags: run tags.
    """

    def __init__(self, *, experiment: str = "openic", run_name: str | None = None, tracking_uri: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        mlflow = _import_mlflow()
        self._entities = mlflow.entities
        self._client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self._client.create_experiment(experiment)
        run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id: str = run.info.run_id
        self._closed = False
        self._pending: list = []
        logger.info("mlflow run %s in experiment %r", self.run_id, experiment)

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = []
        for key, value in params.items():
            text = "" if value is None else str(value)
            if len(text) > _PARAM_VALUE_LIMIT:
                logger.warning("mlflow param %r is %d characters; logging the first %d", key, len(text),
                               _PARAM_VALUE_LIMIT)
                text = text[:_PARAM_VALUE_LIMIT]
            entries.append(self._entities.Param(key, text))
        for i in range(0, len(entries), _PARAMS_PER_CALL):
            self._client.log_batch(self.run_id, params=entries[i:i + _PARAMS_PER_CALL])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        """Epoch summaries (records holding ``epoch_time``) go out at once under their own names with step = epoch;
        per-batch records are buffered as the ``batch/NAME`` series (step = update count) and sent in batches."""
        now_ms = int(time.time() * 1000)
        if EPOCH_MARKER in metrics:
            entries = [self._entities.Metric(k, float(v), now_ms, int(epoch)) for k, v in metrics.items()
                       if math.isfinite(float(v))]
            self._send(self._pending + entries)
            self._pending = []
            return
        self._pending += [self._entities.Metric(f"batch/{k}", float(v), now_ms, int(step)) for k, v in metrics.items()
                          if math.isfinite(float(v))]
        if len(self._pending) >= _METRICS_PER_CALL:
            self._send(self._pending)
            self._pending = []

    def _send(self, entries: list) -> None:
        for i in range(0, len(entries), _METRICS_PER_CALL):
            self._client.log_batch(self.run_id, metrics=entries[i:i + _METRICS_PER_CALL])

    def log_artifact(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact not found: {path}")
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self._client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        """Send what is buffered and end the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if not self._closed:
            self._send(self._pending)
            self._pending = []
            self._client.set_terminated(self.run_id, status=status)
            self._closed = True


class SafeTracker:
    """Wraps a tracker so that its failures are logged once per method and never reach the training loop."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._warned: set[str] = set()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self.inner, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            if method not in self._warned:
                logger.warning("tracking %s failed (training goes on; further failures of it are not shown): %s: %s",
                               method, type(e).__name__, e)
                self._warned.add(method)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self._call("log_metrics", metrics, step=step, epoch=epoch)

    def log_artifact(self, path: Path) -> None:
        self._call("log_artifact", path)

    def close(self, *args: Any) -> None:
        self._call("close", *args)
