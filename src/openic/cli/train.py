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

from openic.cli.argtypes import location
from openic.cli.hpflags import add_cli_arguments, from_cli_namespace
from openic.errors import ClientError
from openic.train.config import TrainConfig, flag_name
from openic.train.job import DEMO_HYPERPARAMETERS, JobResult, leave_if_finished_peer, run_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (SageMaker image-classification hyperparameters)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)  # `--mini_batch_siz` must be an error, not `--mini_batch_size`
    channels = p.add_argument_group("channels (SageMaker's train, validation, train_lst, validation_lst, model)")
    channels.add_argument("--train", help=".rec file, image folder, .lst or manifest, or an s3:// object or prefix "
                          "(required unless --sagemaker)")
    channels.add_argument("--validation", help="same kinds as --train (required unless --sagemaker)")
    channels.add_argument("--train-lst", "--train_lst", dest="train_lst", help=".lst file or folder (or s3://)")
    channels.add_argument("--validation-lst", "--validation_lst", dest="validation_lst")
    channels.add_argument("--model", help="earlier model.tar.gz (incremental training; or s3://)")
    channels.add_argument("--input-mode", "--input_mode", dest="input_mode", choices=("File", "FastFile", "Pipe"),
                          default="File", help="SageMaker's TrainingInputMode: File (s3:// data copied once into "
                          "the cache; the default) or Pipe (train and validation are s3:// RecordIO, read straight "
                          "from S3)")
    add_run_options(p)
    add_launch_options(p)
    p.add_argument("--hyperparameters", type=Path, help="JSON object of hyperparameters (SageMaker's file)")
    container = p.add_argument_group("SageMaker's training container (docs/container.md)")
    container.add_argument("--sagemaker", action="store_true", help="read the job from ML_ROOT/input (config "
                           "files, channels), write ML_ROOT/model, ML_ROOT/output/failure, ML_ROOT/checkpoints")
    container.add_argument("--ml-root", "--ml_root", dest="ml_root", type=Path, default=Path("/opt/ml"),
                           help="the container's root (default %(default)s)")
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
            group.add_argument(*names, dest=f.name, default=default, help=help_text, 
                               type={"path": location, "int": int}.get(kind, str), metavar=meta["metavar"],
                               choices=meta["choices"] or None)


_LAUNCH_FLAGS = {"--nproc-per-node": "nproc_per_node", "--nnodes": "nnodes", "--node-rank": "node_rank",
                 "--master-addr": "master_addr", "--master-port": "master_port", "--max-restarts": "max_restarts"}


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """torchrun's options: given here, ``openic train`` starts itself once per rank through torchrun's launcher."""
    group = p.add_argument_group("distributed training (torchrun's launcher; or run `torchrun -m openic train ...`)")
    helps = {"nproc_per_node": "processes on this host (one per GPU; default 1)",
             "nnodes": "hosts in the job (SageMaker's instance_count; default 1)",
             "node_rank": "this host's index, 0..nnodes-1 (default 0)",
             "master_addr": "address of the host with node rank 0 (default 127.0.0.1)",
             "master_port": "free TCP port on the master (default: any free port on one host, 29500 on several)",
             "max_restarts": "restart every rank this many times after a failure, resuming from the last "
                             "checkpoint (default 0)"}
    for flag, dest in _LAUNCH_FLAGS.items():
        group.add_argument(flag, "--" + dest, dest=dest, type=str if dest == "master_addr" else int,
                           default=None, help=helps[dest])


def _launch_options(args: argparse.Namespace):  # -> LaunchOptions
    from openic.train.launch import LaunchOptions

    given = {dest: getattr(args, dest) for dest in _LAUNCH_FLAGS.values() if getattr(args, dest) is not None}
    return LaunchOptions(**given)


def _without_launch_flags(argv: list[str]) -> list[str]:
    """The command line each rank runs: this one without torchrun's options (``--flag v`` and ``--flag=v``)."""
    names = set(_LAUNCH_FLAGS) | {"--" + d for d in _LAUNCH_FLAGS.values()}
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif token.split("=", 1)[0] not in names:
            out.append(token)
    return out


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
    from openic.data.pipe import make_channel
    from openic.data.sources import Channel
    from openic.logs import setup_logging
    from openic.storage.local import local_path
    from openic.train.launch import launch as run_launch
    from openic.train.launch import under_launcher

    setup_logging()
    overrides = from_cli_namespace(args) | _extra_pairs(getattr(args, "extra", []))  # ClientError: a usage error
    if args.sagemaker:
        from openic.train.container_run import run_container

        return run_container(args.ml_root, list(getattr(args, "argv", [])))
    for flag, value in (("--train", args.train), ("--validation", args.validation),
                        ("--output-dir", args.output_dir)):
        if value is None:
            raise ClientError(f"{flag} is required (or --sagemaker to read the job from --ml-root)")
    launch = _launch_options(args)
    if launch.distributed and not under_launcher():
        from openic.train.remote import RemoteOutputs

        argv = _without_launch_flags(list(getattr(args, "argv", [])))
        outputs = RemoteOutputs.plan(args.output_dir, args.checkpoint_dir)
        code = run_launch(launch, "openic", argv, output_dir=outputs.output_dir)
        if code and outputs.remote and launch.node_rank == 0:  # the launcher's failure file, when a rank died
            outputs.push_all()
        return code
    channels = {name: make_channel(name, getattr(args, name), getattr(args, f"{name}_lst"), args.input_mode)
                for name in ("train", "validation")}
    if args.model is not None:
        channels["model"] = Channel("model", local_path(args.model))
    options = run_options(args)
    if options.get("pretrained") is not None:
        options["pretrained"] = local_path(options["pretrained"])  # s3:// weights: into the cache first
    job: JobResult = run_job(channels, options, hyperparameters_file=args.hyperparameters,
                             overrides=overrides)
    return leave_if_finished_peer(job.exit_code)


def cmd_demo(args: argparse.Namespace) -> int:
    from openic.logs import setup_logging

    setup_logging()
    from openic.sdk.demo import run_workshop

    return run_workshop(args.dir, epochs=args.epochs, seed=args.seed, show=args.show)
