"""The ``openic`` command line: one subcommand module per area, each a thin shell over the library.

Every subcommand module exposes ``register(subparsers)`` and sets ``func`` on its parser; ``func(args)``
returns the exit code. Errors a user can cause (``ClientError``, missing files) print one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from openic import __version__
from openic.errors import ClientError

# Listed explicitly (no import-time registration): the order is the order in --help.
_COMMAND_MODULES = ("openic.cli.rec", "openic.cli.im2rec", "openic.cli.datasets", "openic.cli.train", "openic.cli.runs",
                    "openic.cli.serve", "openic.cli.transform", "openic.cli.jobs", "openic.cli.models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openic", description="SageMaker's Image Classification algorithm, locally, on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"openic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra_hyperparameters", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # `train` checks these as hyperparameter names, to suggest the closest valid one
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # `train` re-runs itself on every rank
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `openic rec inspect x.rec | head` is normal use
        return 0
    except (ClientError, OSError) as e:  # bad input, or a file the user named that cannot be read or written
        print(f"openic {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openic {args.command}: interrupted", file=sys.stderr)
        return 130
