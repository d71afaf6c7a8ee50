"""openic rec inspect|index: look inside MXNet RecordIO files.

inspect prints one JSON object per record (key, offset, parts, header fields, payload size and md5; with
--decode the decoded image's shape and checksums), so two .rec files can be compared with diff.
index writes the missing .idx of a .rec by scanning it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openic.cli.argtypes import pixel_limit
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.formats.rec_inspect import index_records, inspect_records


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rec",
        help="inspect or index RecordIO (.rec) files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True)

    i = actions.add_parser("inspect", help="print one JSON object per record")
    i.add_argument("rec", metavar="FILE.rec", type=Path)
    i.add_argument("--idx", metavar="FILE.idx", type=Path, help="index file (default: FILE.idx beside FILE.rec)")
    i.add_argument("--decode", action="store_true", help="decode images: add shape, sum, csum, pix_md5")
    i.add_argument(
        "--max-image-pixels",
        metavar="N",
        type=pixel_limit,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="with --decode, refuse images whose header declares more pixels (width x height) than this, before "
        "decoding them (default: %(default)s)",
    )
    i.set_defaults(func=run_inspect)

    x = actions.add_parser("index", help="write the missing .idx of a .rec by scanning it")
    x.add_argument("rec", metavar="FILE.rec", type=Path)
    x.add_argument("--out", metavar="FILE.idx", type=Path, help="where to write (default: FILE.idx beside FILE.rec)")
    x.add_argument(
        "--key",
        choices=("number", "id"),
        default="number",
        help="number: 0..N-1 in file order; id: each record's header id, as im2rec keys them (default: %(default)s)",
    )
    x.set_defaults(func=run_index)


def run_inspect(args: argparse.Namespace) -> int:
    out = sys.stdout
    for info in inspect_records(args.rec, args.idx, decode=args.decode, max_pixels=args.max_image_pixels):
        out.write(json.dumps(info) + "\n")
    return 0


def run_index(args: argparse.Namespace) -> int:
    index = index_records(args.rec, args.out, key=args.key)
    target = args.out if args.out is not None else args.rec.with_suffix(".idx")
    print(json.dumps({"idx": str(target), "records": len(index)}))
    return 0
