"""``openic transform``: SageMaker's batch transform over a folder, a .rec file or a manifest (X -> X.out)."""

from __future__ import annotations

import argparse
import os

from openic.cli.argtypes import location, pixel_limit
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.serving import BACKEND_HELP, BACKENDS, COMPILE_HELP


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("transform", help="batch transform: each input object X gets OUTPUT/X.out",
                       description="Batch transform as SageMaker writes it. Re-running skips finished outputs; an "
                       "input that fails is named and the rest go on (exit 1 if any failed).")
    t.add_argument("--model", type=location, required=True,
                   help="model.tar.gz or its extracted folder, or an s3:// URI")
    t.add_argument("--input", type=location, required=True,
                   help="a folder, a .rec file or a .manifest/.jsonl file, or an s3:// object or prefix")
    t.add_argument("--output", type=location, required=True, help="folder for the .out files, or an s3:// prefix")
    t.add_argument("--content-type", default="application/x-image", help="of each object (default: %(default)s; "
                   ".npy files are application/x-npy)")
    t.add_argument("--accept", default="application/jsonlines", help="response format (default: %(default)s)")
    t.add_argument("--split-type", choices=("None", "RecordIO", "Line"),
                   help="default: None for a folder, RecordIO for .rec, Line for a manifest")
    t.add_argument("--assemble-with", choices=("None", "Line"), default="Line",
                   help="how one object's responses are joined (default: %(default)s)")
    t.add_argument("--preprocess", choices=("sagemaker", "validation"), default="sagemaker")
    t.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    t.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    t.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    t.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    t.add_argument("--max-image-pixels", type=pixel_limit, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openic.serving.app import DEFAULT_MAX_PAYLOAD_MB
    from openic.serving.handler import load
    from openic.serving.server import max_payload_mb_from_env
    from openic.serving.transform import TransformOptions, transform_location

    options = TransformOptions(content_type=args.content_type, accept=args.accept, split_type=args.split_type,
                               assemble_with=args.assemble_with, preprocess=args.preprocess,
                               batch_size=args.batch_size, workers=args.workers,
                               max_payload_mb=max_payload_mb_from_env(DEFAULT_MAX_PAYLOAD_MB),
                               max_image_pixels=args.max_image_pixels, progress=not args.quiet)
    predictor = load(args.model, backend=args.backend, compile_batch=options.batch_size if args.compile else None)
    report = transform_location(predictor, args.input, args.output, options)
    print(f"transform: {report.done} written, {report.skipped} already done, {len(report.failed)} failed "
          f"-> {args.output}")
    return 1 if report.failed else 0
