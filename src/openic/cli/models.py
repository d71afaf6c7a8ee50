"""``openic import-mxnet``: SageMaker's own model.tar.gz (MXNet) converted to an openic artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from openic.cli.argtypes import location


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("import-mxnet", help="convert SageMaker's MXNet model.tar.gz to an openic model.tar.gz",
                       description="Read a model trained by SageMaker's built-in image-classification algorithm "
                       "(image-classification-symbol.json + -NNNN.params + model-shapes.json, in model.tar.gz or "
                       "a folder) without MXNet, and write an openic artifact with the same predictions. serve, "
                       "predict, transform and the model channel also read SageMaker's artifacts directly.")
    m.add_argument("model", type=location, metavar="MODEL", help="SageMaker model.tar.gz or folder, or an s3:// URI")
    m.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.tar.gz", help="openic artifact to write")
    m.add_argument("--epoch", type=int, help="0-based epoch of an earlier -NNNN.params (NNNN = epoch + 1; "
                   "default: the highest NNNN)")
    m.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from openic.artifacts.convert import import_mxnet
    from openic.storage.local import local_path

    out = import_mxnet(local_path(args.model), args.output, epoch=args.epoch)
    print(f"import-mxnet: wrote {out}")
    return 0
