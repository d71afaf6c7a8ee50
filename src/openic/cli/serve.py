"""``openic serve`` (SageMaker's endpoint contract over HTTP) and ``openic predict`` (top-k, no server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openic.cli.argtypes import location, pixel_limit
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.serving import BACKEND_HELP, BACKENDS, COMPILE_HELP


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a model.tar.gz on SageMaker's /ping and /invocations",
                       description="Serve a model as SageMaker's image-classification endpoint does. With no "
                       "--model, serves the container's /opt/ml/model (OPENIC_ML_ROOT moves /opt/ml).")
    s.add_argument("--model", type=location,
                   help="model.tar.gz or its extracted folder, or an s3:// URI (default: /opt/ml/model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8080, help="port (default: %(default)s, SageMaker's)")
    s.add_argument("--workers", type=int, default=1, help="worker processes, one model each (default: 1)")
    s.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    _model_options(s)
    s.add_argument("--max-batch", type=int, default=32, help="most images per forward pass (default: %(default)s)")
    s.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a request waits for others to batch with (default: %(default)s)")
    s.add_argument("--max-queue", type=int, default=1024,
                   help="images allowed to wait; more are refused with 503 (default: %(default)s)")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.add_argument("--max-payload-mb", type=float,
                   help="largest request body (default: SAGEMAKER_MAX_PAYLOAD_IN_MB or 6)")
    s.set_defaults(func=run_serve)

    p = sub.add_parser("predict", help="top-k classes of image files, without a server")
    p.add_argument("--model", type=location, required=True,
                   help="model.tar.gz or its extracted folder, or an s3:// URI")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: %(default)s)")
    _model_options(p)
    p.set_defaults(func=run_predict)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    p.add_argument("--preprocess", choices=("sagemaker", "validation"), default="sagemaker",
                   help="sagemaker: resize to HxW ignoring aspect, as SageMaker's endpoint does (default); "
                   "validation: training's shorter-side resize + centre crop, to match validation accuracy")
    p.add_argument("--max-image-pixels", type=pixel_limit, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="refuse images declaring more pixels than this, before decoding (default: %(default)s)")


def run_serve(args: argparse.Namespace) -> int:
    from openic.errors import ClientError
    from openic.serving.app import DEFAULT_MAX_PAYLOAD_MB, ServeConfig, model_dir_default
    from openic.serving.batching import BatchOptions
    from openic.serving.server import max_payload_mb_from_env, serve

    model = args.model or model_dir_default()
    payload = args.max_payload_mb if args.max_payload_mb is not None else max_payload_mb_from_env(
        DEFAULT_MAX_PAYLOAD_MB)
    if not 0 < payload <= 1024:
        raise ClientError(f"--max-payload-mb must be in (0, 1024], got {payload}")
    try:
        batch = BatchOptions(args.max_batch, args.max_wait_ms, args.max_queue)
    except ValueError as e:
        raise ClientError(str(e).replace("max_", "--max-").replace("_", "-")) from None
    config = ServeConfig(model=str(model), backend=args.backend, preprocess=args.preprocess, max_payload_mb=payload,
                         max_image_pixels=args.max_image_pixels, threads=args.threads, workers=args.workers,
                         batch=batch, compile=args.compile)
    serve(config, host=args.host, port=args.port)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from openic.errors import ClientError
    from openic.serving.handler import IMAGE_TYPES, decode, load

    if not 1 <= args.top_k <= 10_000:
        raise ClientError(f"--top-k must be 1..10000, got {args.top_k}")
    predictor = load(args.model, backend=args.backend)
    names = predictor.class_names
    failed = 0
    for path in args.images:
        try:
            images = decode(path.read_bytes(), IMAGE_TYPES[0], predictor.image_shape[0],
                            max_pixels=args.max_image_pixels)
            probs = predictor.predict(predictor.preprocess(images, args.preprocess))[0]
        except (ClientError, OSError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        order = probs.argsort()[::-1][: args.top_k]
        top = "  ".join(f"{names[i] if names else i}={probs[i]:.4f}" for i in order)
        print(f"{path}: {top}")
    return 1 if failed else 0
