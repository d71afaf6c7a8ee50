"""``openic train`` and ``openic demo``: SageMaker's training job, on this machine.

Hyperparameter flags are generated from the ``HyperParameters`` schema (``--num_layers 18 --image_shape 3,28,28``,
spelled as SageMaker spells them). On failure the reason goes to ``OUTPUT_DIR/failure`` with SageMaker's prefix:
``ClientError:`` for the user's mistakes, ``AlgorithmError:`` for ours, and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from openic.cli.hpflags import add_cli_arguments, from_cli_namespace
from openic.errors import ClientError
from openic.fileio import atomic_write_text
from openic.hyperparams import load_hyperparameters_file

log = logging.getLogger("openic.train")

# The SageMaker workshop's settings (ResNet-18 at 3,28,28, batch 128, lr 0.01, as bench/train.py's "workshop"),
# for the digits demo's 1,437 training images and a few epochs.
DEMO_HYPERPARAMETERS = {
    "num_layers": "18", "image_shape": "3,28,28", "num_classes": "10", "num_training_samples": "1437",
    "mini_batch_size": "128", "epochs": "4", "learning_rate": "0.01", "augmentation_type": "crop",
    "precision_dtype": "float32", "top_k": "2",
}


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
    _add_run_options(p)
    p.add_argument("--hyperparameters", type=Path, help="JSON object of hyperparameters (SageMaker's file)")
    add_cli_arguments(p)
    p.set_defaults(func=run_train, takes_extra_hyperparameters=True)

    d = sub.add_parser("demo", help="build the digits data set and train on it with the workshop's settings")
    d.add_argument("--dir", type=Path, default=Path("demo-output"), help="where data and the model go")
    d.add_argument("--epochs", default=DEMO_HYPERPARAMETERS["epochs"], help="epochs to train (default %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run_demo)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run options (not hyperparameters)")
    run.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True,
                     help="where model.tar.gz, metrics.jsonl, checkpoints and failure go")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    run.add_argument("--workers", type=int, default=None, help="decoding processes for streamed data")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    run.add_argument("--cache-mb", type=int, default=4096, metavar="MB",
                     help="decode data sets up to this size once into memory (default 4096; 0 = always stream)")
    run.add_argument("--pretrained", type=Path, default=os.environ.get("OPENIC_PRETRAINED_DIR"),
                     help="ImageNet weights for use_pretrained_model=1 (file or folder; env OPENIC_PRETRAINED_DIR)")
    run.add_argument("--label-format", default="multi-hot", choices=("multi-hot", "class-id"),
                     help="label format of augmented manifests (SageMaker's content-type parameter)")
    run.add_argument("--precise-bn-batches", type=int, default=2, metavar="N",
                     help="re-estimate BatchNorm statistics from each epoch's last N training batches before "
                          "validation (default 2; 0 keeps MXNet's running averages only)")
    run.add_argument("--label-attribute", default=None, metavar="NAME",
                     help="label key of augmented manifests (SageMaker's AttributeNames[1]); default: the only key "
                          "besides source-ref and *-metadata")
    run.add_argument("--no-resume", dest="resume", action="store_false",
                     help="ignore checkpoints in --output-dir and start over")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")


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


def _write_failure(out_dir: Path, text: str) -> None:
    """SageMaker's ``/opt/ml/output/failure``: the reason, first line prefixed ClientError/AlgorithmError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "failure", text + "\n")


def run_train(args: argparse.Namespace) -> int:
    from openic.logs import setup_logging

    setup_logging()
    out_dir: Path = args.output_dir
    failure = out_dir / "failure"
    if failure.exists():
        failure.unlink()
    try:
        raw = load_hyperparameters_file(args.hyperparameters) if args.hyperparameters else {}
        raw |= from_cli_namespace(args) | _extra_pairs(getattr(args, "extra", []))
        return _train(raw, args)
    except (ClientError, FileNotFoundError) as e:
        _write_failure(out_dir, f"ClientError: {e}")
        print(f"ClientError: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("openic train: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - any other failure is ours: report it as SageMaker does
        _write_failure(out_dir, f"AlgorithmError: {type(e).__name__}: {e}\n\n{traceback.format_exc()}")
        traceback.print_exc()
        print(f"AlgorithmError: {type(e).__name__}: {e} (details in {failure})", file=sys.stderr)
        return 1


def _train(raw: dict[str, str], args: argparse.Namespace) -> int:
    from openic.data.sources import Channel
    from openic.train.setup import TrainConfig

    channels = {"train": Channel("train", args.train, args.train_lst),
                "validation": Channel("validation", args.validation, args.validation_lst)}
    if args.model is not None:
        channels["model"] = Channel("model", args.model)
    names = ("output_dir", "seed", "device", "resume", "progress", "pretrained", "label_format", "label_attribute",
             "threads", "precise_bn_batches", "cache_mb", "workers")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return _fit(raw, channels, TrainConfig(**options))


def _fit(raw: dict[str, str], channels: dict, config: object) -> int:
    from openic.hyperparams import HyperParameters
    from openic.train.loop import fit

    result = fit(HyperParameters.from_strings(raw), channels, config)  # type: ignore[arg-type]
    print(f"model: {result.model_path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The workshop flow on the offline digits set: data → RecordIO → ResNet-18 → model.tar.gz + charts."""
    from openic.data.sources import Channel
    from openic.logs import setup_logging
    from openic.prep.samples import make_digits
    from openic.train.setup import TrainConfig

    setup_logging()
    info = make_digits(args.dir / "data")
    print(info.summary())
    out = args.dir / "model"
    hp = DEMO_HYPERPARAMETERS | {"epochs": str(args.epochs)}
    channels = {"train": Channel("train", info.train_rec), "validation": Channel("validation", info.val_rec)}
    status = _fit(hp, channels, TrainConfig(output_dir=out, seed=args.seed, resume=False))
    try:
        from openic.tracking.charts import plot_run

        print(f"chart: {plot_run(out)}")
    except ClientError as e:
        print(f"(no chart: {e})")
    return status
