"""openic im2rec PREFIX ROOT: MXNet 1.9.1's tools/im2rec.py, same flags and outputs.

--list walks ROOT and writes PREFIX.lst (or PREFIX_train/_val/_test.lst, PREFIX_<chunk>… with --chunks),
plus PREFIX_classes.txt (folder names in label order) with --recursive. Without --list, every .lst whose path
starts with PREFIX (every .lst in it, if PREFIX is a folder) is packed into a .rec/.idx beside it, reading the
images under ROOT.

Differences from MXNet: a malformed .lst line or a path leaving ROOT is an error (MXNet skips the line); a
missing or undecodable image is reported with file:line and the packing fails without writing a .rec unless
--skip-bad is given (MXNet skips silently); so is an image declaring more than --max-image-pixels pixels;
--color -1 is not supported; --chunks may not leave a list empty; output files appear atomically, and a second
im2rec packing the same .rec fails at once instead of corrupting it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from openic.cli.argtypes import boolean, pixel_limit
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.logs import setup_logging
from openic.prep.im2rec import PackOptions, pack_prefix
from openic.prep.im2rec_list import DEFAULT_EXTS, ListOptions, make_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "im2rec",
        help="make .lst image lists and pack them into RecordIO (MXNet's im2rec)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prefix", metavar="PREFIX", help="prefix of the .lst/.rec/.idx files (or a folder of .lst files)")
    p.add_argument("root", metavar="ROOT", help="folder containing the images")

    c = p.add_argument_group("options for creating image lists")
    c.add_argument("--list", action="store_true", help="create image list(s) from ROOT instead of packing")
    c.add_argument("--exts", nargs="+", default=list(DEFAULT_EXTS), help="image extensions (default: %(default)s)")
    c.add_argument(
        "--chunks", type=int, default=1, help="number of chunks, at most the number of images (default: %(default)s)"
    )
    c.add_argument("--train-ratio", type=float, default=1.0, help="fraction for training (default: %(default)s)")
    c.add_argument("--test-ratio", type=float, default=0.0, help="fraction for testing (default: %(default)s)")
    c.add_argument(
        "--recursive",
        action="store_true",
        help="walk sub-folders; each folder holding images is a class, numbered in sorted walk order",
    )
    shuffle = c.add_mutually_exclusive_group()
    shuffle.add_argument(
        "--no-shuffle", dest="shuffle", action="store_false", help="keep walk order (default: shuffle, seed 100)"
    )
    shuffle.add_argument("--shuffle", dest="shuffle", type=boolean, help="older MXNet spelling: --shuffle false")
    p.set_defaults(shuffle=True)

    r = p.add_argument_group("options for creating the record files")
    r.add_argument("--pass-through", action="store_true", help="store the image files' bytes unchanged")
    r.add_argument(
        "--resize", type=int, default=0, help="resize the shorter side to this many pixels, 1-65535 (0: keep)"
    )
    r.add_argument("--center-crop", action="store_true", help="crop the centre square before resizing")
    r.add_argument(
        "--quality", type=int, default=95, help="JPEG quality 1-100, or PNG compression 0-9 (default: %(default)s)"
    )
    r.add_argument("--num-thread", type=int, default=1,
                   help="encoding workers (processes, as MXNet; threads where fork is unavailable), 1-256; "
                   "output order is kept")
    r.add_argument("--color", type=int, default=1, choices=[1, 0], help="1: colour (default), 0: grayscale")
    r.add_argument("--encoding", default=".jpg", choices=[".jpg", ".png"], help="image encoding (default: .jpg)")
    r.add_argument("--pack-label", action="store_true", help="store every label column of a multi-label .lst")
    r.add_argument(
        "--skip-bad", action="store_true", help="pack the readable images even if some are missing or undecodable"
    )
    r.add_argument(
        "--max-image-pixels",
        metavar="N",
        type=pixel_limit,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="treat images declaring more pixels (width x height) than this, or resized to more, as unreadable, "
        "before decoding them (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no INFO messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr)
    if args.list:
        options = ListOptions(
            exts=tuple(args.exts),
            recursive=args.recursive,
            shuffle=args.shuffle,
            chunks=args.chunks,
            train_ratio=args.train_ratio,
            test_ratio=args.test_ratio,
        )
        result = make_list(args.prefix, args.root, options)
        for path in result.lst_paths:
            print(path)
        if result.classes_path is not None:
            print(result.classes_path)
        return 0
    options = PackOptions(
        pass_through=args.pass_through,
        resize=args.resize,
        center_crop=args.center_crop,
        quality=args.quality,
        num_thread=args.num_thread,
        color=args.color,
        encoding=args.encoding,
        pack_label=args.pack_label,
        skip_bad=args.skip_bad,
        progress=not args.quiet and sys.stderr.isatty(),
        max_image_pixels=args.max_image_pixels,
    )
    for res in pack_prefix(args.prefix, args.root, options):
        skipped = f", skipped {len(res.skipped)}" if res.skipped else ""
        print(f"{res.rec_path}: {res.written} records{skipped} (from {res.lst_path})")
    return 0
