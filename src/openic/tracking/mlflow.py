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
        """Finite values only (mlflow rejects NaN on some stores); ``epoch`` is logged as a metric too."""
        now_ms = int(time.time() * 1000)
        values = {**metrics, "epoch": epoch}
        entries = [self._entities.Metric(k, float(v), now_ms, int(step)) for k, v in values.items()
                   if math.isfinite(float(v))]
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

    def close(self) -> None:
        if not self._closed:
            self._client.set_terminated(self.run_id, status="FINISHED")
            self._closed = True
