"""``openic datasets digits|cifar10 DIR``: ready-made data sets as RecordIO, for demos and benchmarks.

``digits`` needs no network: scikit-learn's 1,797 bundled 8x8 digits become 32x32 RGB images under DIR/images,
split and packed as MXNet's im2rec would (DIR/digits_train.rec, DIR/digits_val.rec, .lst, .idx, classes file).
``cifar10`` downloads CIFAR-10 (resumable; re-runs re-use the download): from Toronto as the python tarball
(md5-checked, converted to DIR/cifar10_train.rec and DIR/cifar10_test.rec with lossless PNG images), or the two
JPEG .rec files MXNet publishes (DIR/cifar10_train.rec, DIR/cifar10_val.rec).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from openic.logs import setup_logging
from openic.prep.samples import CIFAR10_MXNET_URL, CIFAR10_SOURCES, CIFAR10_URL, make_cifar10, make_digits


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datasets",
        help="build ready-made data sets as RecordIO (digits offline, CIFAR-10 downloaded)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="dataset", required=True)

    d = kinds.add_parser("digits", help="scikit-learn's 1,797 digits as 32x32 RGB images (no download)")
    d.add_argument("dir", metavar="DIR", type=Path, help="output folder (DIR/images is replaced)")
    d.add_argument("--seed", type=int, default=100, help="shuffle seed (default: %(default)s, MXNet's fixed seed)")
    d.add_argument(
        "--train-ratio", type=float, default=0.8, help="fraction of images for training (default: %(default)s)"
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar and no INFO messages")
    d.set_defaults(func=run_digits)

    c = kinds.add_parser("cifar10", help="download CIFAR-10 (50,000 train + 10,000 test/val images)")
    c.add_argument("dir", metavar="DIR", type=Path, help="output folder; downloads are kept there and re-used")
    c.add_argument(
        "--source",
        choices=CIFAR10_SOURCES,
        default="toronto",
        help=f"toronto: the python tarball from {CIFAR10_URL}, converted here (default); "
        f"mxnet: the .rec files from {CIFAR10_MXNET_URL}",
    )
    c.add_argument("--url", help="base URL replacing the source's (a mirror)")
    c.add_argument(
        "--encoding",
        choices=[".png", ".jpg"],
        default=".png",
        help="image encoding when converting the tarball: .png keeps pixels exact (default), .jpg is quality 95",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bars and no INFO messages")
    c.set_defaults(func=run_cifar10)


def _setup(quiet: bool) -> bool:
    """Log to stderr (stdout carries the summary); returns whether to draw progress bars."""
    setup_logging(logging.WARNING if quiet else logging.INFO, stream=sys.stderr)
    return not quiet and sys.stderr.isatty()


def run_digits(args: argparse.Namespace) -> int:
    progress = _setup(args.quiet)
    info = make_digits(args.dir, seed=args.seed, train_ratio=args.train_ratio, progress=progress)
    print(info.summary())
    return 0


def run_cifar10(args: argparse.Namespace) -> int:
    progress = _setup(args.quiet)
    info = make_cifar10(args.dir, source=args.source, url=args.url, encoding=args.encoding, progress=progress)
    print(info.summary())
    return 0
