"""Metrics tracking: a narrow ``Tracker`` protocol, the default ``FileTracker`` and helpers to read its files.

``MlflowTracker`` lives in :mod:`openic.tracking.mlflow` and charts in :mod:`openic.tracking.charts`; both import
their optional dependency only when used.
"""

from __future__ import annotations

from openic.tracking.base import (
    METRICS_CSV,
    METRICS_JSONL,
    PARAMS_JSON,
    FileTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    per_epoch,
    read_metrics,
    write_csv,
)

__all__ = ["METRICS_CSV", "METRICS_JSONL", "PARAMS_JSON", "FileTracker", "MultiTracker", "NullTracker", "Tracker",
           "per_epoch", "read_metrics", "write_csv"]
