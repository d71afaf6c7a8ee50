"""Start the endpoint: check the model once, size torch's threads per worker, run uvicorn.

One model per worker process. Threads are split so workers do not oversubscribe the cores (two 2-thread torch
processes on 2 cores ran ~130x slower than one): each worker gets ``cpu_count // workers`` threads unless told.
SIGTERM is uvicorn's graceful shutdown: it stops accepting, answers what is in flight (up to 30 s, SageMaker's
grace before SIGKILL), then exits.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace

from openic.errors import ClientError
from openic.serving.app import ServeConfig, create_app
from openic.serving.batching import torch_thread

log = logging.getLogger(__name__)

MAX_WORKERS = 256
GRACEFUL_SHUTDOWN_S = 30


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def max_payload_mb_from_env(default: float) -> float:
    """``SAGEMAKER_MAX_PAYLOAD_IN_MB`` (SageMaker sets it for batch transform: 1..100)."""
    text = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise ClientError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB must be a number of MB in (0, 100], got {text!r}")
    return value


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until SIGTERM/Ctrl-C. A damaged or mismatched model fails here, naming the file, before binding."""
    import uvicorn

    if not 1 <= config.workers <= MAX_WORKERS:
        raise ClientError(f"--workers must be 1..{MAX_WORKERS}, got {config.workers}")
    if not 0 <= port <= 65535:
        raise ClientError(f"--port must be 0..65535, got {port}")
    if config.threads is not None and not 1 <= config.threads <= 1024:
        raise ClientError(f"--threads must be 1..1024, got {config.threads}")
    config = replace(config, threads=config.threads or default_threads(config.workers))
    predictor = torch_thread().submit(config.load).result()  # also builds the ONNX cache
    common = {"host": host, "port": port, "log_level": "warning", "access_log": False, "backlog": 2048,
              "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S, "timeout_keep_alive": 75}
    print(f"openic serve: {config.model} on http://{host}:{port} ({config.workers} worker(s), "
          f"{config.threads} thread(s) each, {config.backend})", flush=True)
    if config.workers == 1:
        uvicorn.run(create_app(config, predictor), **common)
        return
    del predictor  # each worker loads its own copy
    os.environ["OPENIC_SERVE_CONFIG"] = config.to_json()
    with tempfile.TemporaryDirectory(prefix="openic-prometheus-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        uvicorn.run("openic.serving.app:app_from_env", factory=True, workers=config.workers, **common)
