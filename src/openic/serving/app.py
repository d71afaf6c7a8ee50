"""The HTTP shell over the handler hooks: SageMaker's endpoint contract on Starlette (served by uvicorn).

Starlette rather than FastAPI: every route takes raw bytes and negotiates its own content types, so FastAPI's
pydantic models and OpenAPI layer would add import time and per-request work for nothing.

Routes: ``GET /ping``; ``POST /invocations``; ``POST /endpoints/{name}/invocations`` (the SageMaker Runtime path
that boto3's ``invoke_endpoint`` calls, so ``endpoint_url=`` pointed here works unchanged); ``GET /metrics``
(Prometheus); ``GET /execution-parameters`` (batch transform). Every error is JSON ``{"error": ..., "status": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.serving.batching import Batcher, BatchOptions, torch_thread
from openic.serving.handler import (
    PREPROCESS_MODES,
    Predictor,
    RequestError,
    check_content_type,
    decode,
    encode,
    load,
    parse_accept,
)
from openic.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker's real-time limit
PREPROCESS_HEADER = "x-openic-preprocess"
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"  # boto3's invoke_endpoint(CustomAttributes=...)


@dataclass(frozen=True)
class ServeConfig:
    """Everything a worker process needs to build its app (JSON-able, so ``--workers N`` can pass it on)."""

    model: str
    backend: str = "torch"
    preprocess: str = "sagemaker"
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    threads: int | None = None
    workers: int = 1
    batch: BatchOptions = field(default_factory=BatchOptions)
    compile: bool = False

    def load(self) -> Predictor:
        """This config's model, compiled for its largest batch when ``compile`` is set."""
        return load(self.model, backend=self.backend, threads=self.threads,
                    compile_batch=self.batch.max_batch if self.compile else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        raw = json.loads(text)
        return cls(**(raw | {"batch": BatchOptions(**raw["batch"])}))


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message, "status": status}), status_code=status,
                    media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from its declared length, or as soon as a chunked body passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413 if declared.isdigit() else 400,
                           f"the body declares {declared} bytes; the limit is {limit:,} "
                           "(SAGEMAKER_MAX_PAYLOAD_IN_MB)" if declared.isdigit() else
                           f"Content-Length {declared[:40]!r} is not a byte count")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the body passed the limit of {limit:,} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    return bytes(body)


def _preprocess_mode(request: Request, default: str) -> str:
    mode = request.headers.get(PREPROCESS_HEADER)
    for pair in request.headers.get(CUSTOM_ATTRIBUTES, "").split(","):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "preprocess" and mode is None:
            mode = value.strip()
    mode = (mode or default).strip().lower()
    if mode not in PREPROCESS_MODES:
        raise RequestError(400, f"preprocess {mode[:40]!r} is not one of {', '.join(PREPROCESS_MODES)} "
                                f"(header X-Openic-Preprocess or CustomAttributes preprocess=...)")
    return mode


class Endpoint:
    """One model behind one app: the predictor, its batcher and its metrics."""

    def __init__(self, config: ServeConfig, predictor: Predictor | None = None) -> None:
        self.config = config
        self.predictor = predictor
        self.metrics = ServerMetrics()
        self.batcher: Batcher | None = None
        self.limit = int(config.max_payload_mb * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.predictor is None:
            self.predictor = await asyncio.get_running_loop().run_in_executor(torch_thread(), self.config.load)
        self.batcher = Batcher(self.predictor.predict, self.config.batch,
                               on_batch=self.metrics.batch_size.observe, on_depth=self.metrics.queue_depth.set,
                               sizes=self.predictor.batch_sizes)
        self.batcher.start()
        log.info("serving %s (%s backend) on /invocations", self.predictor.source, self.predictor.backend.name)
        try:
            yield
        finally:
            await self.batcher.stop()

    async def invocations(self, request: Request) -> Response:
        assert self.predictor is not None and self.batcher is not None
        p = self.predictor
        answer = parse_accept(request.headers.get("accept"), p.num_classes)
        mode = _preprocess_mode(request, self.config.preprocess)
        content_type = request.headers.get("content-type")
        check_content_type(content_type)  # 415 before the body is read

        def prepare() -> object:
            images = decode(body, content_type or "", p.image_shape[0], max_pixels=self.config.max_image_pixels)
            return p.preprocess(images, mode)

        with self.batcher.incoming():  # the batcher waits for this request only while it is on its way
            body = await _read_body(request, self.limit)
            batch = await asyncio.get_running_loop().run_in_executor(torch_thread(), prepare)
        probs: np.ndarray = await self.batcher.submit(batch)  # type: ignore[arg-type]
        return Response(encode(probs, answer, p.class_names, p.multi_label), media_type=answer.media_type)

    async def ping(self, request: Request) -> Response:
        return Response(b"", status_code=200 if self.predictor is not None else 503)

    async def execution_parameters(self, request: Request) -> Response:
        body = {"MaxConcurrentTransforms": self.config.workers, "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": int(self.config.max_payload_mb)}
        return Response(json.dumps(body), media_type="application/json")

    async def metrics_route(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    def route(self, name: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
        """Time the handler, count its status, and turn every refusal into a JSON error (5xx only for our bugs)."""

        async def run(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except RequestError as e:
                response = _error(e.status, str(e))
            except ClientDisconnect:
                response = _error(400, "the client went away before sending the whole body")
            except Exception as e:  # noqa: BLE001 - a bug of ours: log it, answer 500, keep serving
                log.exception("%s failed", name)
                response = _error(500, f"internal error: {type(e).__name__}: {e}")
            self.metrics.observe(name, response.status_code, time.perf_counter() - start)
            return response

        return run


def create_app(config: ServeConfig, predictor: Predictor | None = None) -> Starlette:
    """The Starlette app for ``config``; pass ``predictor`` to serve one already loaded (tests, the SDK)."""
    ep = Endpoint(config, predictor)
    routes = [
        Route("/ping", ep.route("ping", ep.ping), methods=["GET"]),
        Route("/invocations", ep.route("invocations", ep.invocations), methods=["POST"]),
        Route("/endpoints/{name}/invocations", ep.route("invocations", ep.invocations), methods=["POST"]),
        Route("/execution-parameters", ep.route("execution-parameters", ep.execution_parameters), methods=["GET"]),
        Route("/metrics", ep.metrics_route, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=ep.lifespan)
    app.state.endpoint = ep
    return app


def app_from_env() -> Starlette:
    """The uvicorn factory each ``--workers N`` process calls: the config travels in ``OPENIC_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_json(os.environ["OPENIC_SERVE_CONFIG"]))


def model_dir_default() -> Path:
    """SageMaker's container layout: the model lives in ``$SM_MODEL_DIR`` or ``/opt/ml/model``
    (``OPENIC_ML_ROOT`` moves ``/opt/ml``, so tests can point it at a temporary folder)."""
    if os.environ.get("SM_MODEL_DIR"):
        return Path(os.environ["SM_MODEL_DIR"])
    return Path(os.environ.get("OPENIC_ML_ROOT", "/opt/ml")) / "model"
