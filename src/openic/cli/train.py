"""``openic train`` and ``openic demo``: SageMaker's training job, on this machine.

Hyperparameter flags are generated from the ``HyperParameters`` schema (``--num_layers 18 --image_shape 3,28,28``,
spelled as SageMaker spells them) and run-option flags from ``TrainConfig`` (``--output-dir``, ``--seed``, ...).
The job contract (failure file, exit codes, output-folder lock, SIGTERM) is ``openic.train.job``'s.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from openic.cli.hpflags import add_cli_arguments, from_cli_namespace
from openic.errors import ClientError
from openic.train.config import TrainConfig, flag_name
from openic.train.job import DEMO_HYPERPARAMETERS, JobResult, run_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (SageMaker image-classification hyperparameters)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)  # `--mini_batch_siz` must be an error, not `--mini_batch_size`
    channels = p.add_argument_group("channels (SageMaker's train, validation, train_lst, validation_lst, model)")
    channels.add_argument("--train", type=Path, required=True, help=".rec file, image folder, .lst or manifest")
    channels.add_argument("--validation", type=Path, required=True, help="same kinds as --train")
    channels.add_argument("--train-lst", "--train_lst", dest="train_lst", type=Path, help=".lst file or folder")
    channels.add_argument("--validation-lst", "--validation_lst", dest="validation_lst", type=Path)
    channels.add_argument("--model", type=Path, help="earlier model.tar.gz (incremental training)")
    add_run_options(p)
    p.add_argument("--hyperparameters", type=Path, help="JSON object of hyperparameters (SageMaker's file)")
    add_cli_arguments(p)
    p.set_defaults(func=run_train, takes_extra_hyperparameters=True)

    d = sub.add_parser("demo", help="the workshop offline: digits → RecordIO → train → charts → deploy → predict",
                       description="The SageMaker image-classification workshop end to end on the offline digits "
                       "set, through the SDK: the job lands in the job store (OPENIC_HOME) and in MLflow.")
    d.add_argument("--dir", type=Path, default=Path("demo-output"), help="where the data and the job output go")
    d.add_argument("--epochs", default=DEMO_HYPERPARAMETERS["epochs"], help="epochs to train (default %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--show", type=int, default=8, help="validation images to predict at the end (default: 8)")
    d.set_defaults(func=cmd_demo)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (``--output-dir`` and ``--output_dir``), help and defaults from it."""
    group = p.add_argument_group("run options (not hyperparameters)")
    for f in fields(TrainConfig):
        meta, flag = f.metadata, flag_name(f.name)
        names = [flag] if "_" not in f.name else [flag, "--" + f.name]
        default = os.environ.get(meta["env"]) if meta["env"] else None
        env = f"; env {meta['env']}" if meta["env"] else ""
        shown = "" if f.default is None or meta["kind"] in ("flag-off", "tri-state") else f" (default {f.default})"
        help_text = (meta["help"] + shown + env).replace("%", "%%")
        kind = meta["kind"]
        if kind == "flag-off":
            group.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_const", const=False,
                               default=None, help=help_text)
        elif kind == "tri-state":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(*names, dest=f.name, default=default, help=help_text, required=f.name == "output_dir",
                               type={"path": Path, "int": int}.get(kind, str), metavar=meta["metavar"],
                               choices=meta["choices"] or None)


def run_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``TrainConfig`` fields the flags give (the others keep the field's default)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}


def _extra_pairs(tokens: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs argparse did not know: passed on so that the schema rejects the
    name with the closest valid one suggested (``mini_batch_siz`` → ``mini_batch_size``)."""
    pairs: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ClientError(f"unexpected argument {token!r}; hyperparameters are given as --NAME VALUE")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ClientError(f"{token} needs a value (--NAME VALUE)")
            value, i = tokens[i + 1], i + 1
        pairs[name] = value
        i += 1
    return pairs


def run_train(args: argparse.Namespace) -> int:
    from openic.data.sources import Channel
    from openic.logs import setup_logging

    setup_logging()
    overrides = from_cli_namespace(args) | _extra_pairs(getattr(args, "extra", []))  # ClientError: a usage error
    channels = {"train": Channel("train", args.train, args.train_lst),
                "validation": Channel("validation", args.validation, args.validation_lst)}
    if args.model is not None:
        channels["model"] = Channel("model", args.model)
    job: JobResult = run_job(channels, run_options(args), hyperparameters_file=args.hyperparameters,
                             overrides=overrides)
    return job.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from openic.logs import setup_logging

    setup_logging()
    from openic.sdk.demo import run_workshop

    return run_workshop(args.dir, epochs=args.epochs, seed=args.seed, show=args.show)
