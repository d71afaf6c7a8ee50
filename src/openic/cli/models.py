"""``openic import-mxnet`` (SageMaker's own MXNet model.tar.gz to an openic artifact) and ``openic pretrained``
(MXNet's ImageNet checkpoints for ``use_pretrained_model=1``)."""

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

    p = sub.add_parser("pretrained", help="MXNet's ImageNet ResNet weights for use_pretrained_model=1")
    kinds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    kinds.add_parser("list", help="the models that can be downloaded").set_defaults(func=run_list)
    d = kinds.add_parser("download", help="fetch resnet-N-symbol.json + resnet-N-0000.params (resumable, verified)",
                         description="Download one of MXNet's published ImageNet ResNets into DIR, verified against "
                         "--checksums or the SHA256SUMS an earlier download wrote there, and by loading it. Then "
                         "train with --pretrained DIR (or OPENIC_PRETRAINED_DIR=DIR) and use_pretrained_model=1.")
    d.add_argument("name", metavar="MODEL", help="resnet-18, resnet-34, resnet-50, resnet-101, resnet-152, resnet-200")
    d.add_argument("--dir", type=Path, help="where to keep it (default: $OPENIC_PRETRAINED_DIR or "
                   "~/.openic/pretrained)")
    d.add_argument("--base-url", help="a mirror laid out as data.mxnet.io/models/imagenet/resnet (default: MXNet's)")
    d.add_argument("--checksums", type=Path, metavar="SHA256SUMS", help="sha256sum lines the files must match")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_download)


def run_import(args: argparse.Namespace) -> int:
    from openic.artifacts.convert import import_mxnet
    from openic.storage.local import local_path

    out = import_mxnet(local_path(args.model), args.output, epoch=args.epoch)
    print(f"import-mxnet: wrote {out}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from openic.artifacts.pretrained import MXNET_MODELS_URL, files, model_names

    for name in model_names():
        print(f"{name}  {' '.join(files(name, MXNET_MODELS_URL).values())}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from openic.artifacts.pretrained import MXNET_MODELS_URL, default_dir, download_pretrained

    dest = args.dir or default_dir()
    out = download_pretrained(args.name, dest, base_url=args.base_url or MXNET_MODELS_URL, checksums=args.checksums,
                              progress=not args.quiet)
    print(f"pretrained: {args.name} ready in {out} (train with --pretrained {out} and use_pretrained_model=1)")
    return 0
