"""Run options: everything about a training run that is not a SageMaker hyperparameter, declared once.

Each field carries its help, flag kind and bounds; ``openic train``'s run-option flags are generated from these
fields (``openic.cli.train``), so a new option is one field here. Bounds keep every user integer inside what the
engine can do (a seed past 2**32 - 1 breaks numpy's generator; a thread count past 1024 is a typo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from openic.errors import ClientError, shown
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_LIMIT

_MAX_SEED = 2**32 - 1  # numpy's and Python's generators take seeds below 2**32 from torch's seed in resume state


def _option(default: Any, help: str, kind: str, *, low: int | None = None, high: int | None = None,
            choices: tuple[str, ...] = (), env: str | None = None, metavar: str | None = None) -> Any:
    """A run option; ``kind`` is how the CLI reads it: path, int, str, flag-off (``--no-NAME``) or tri-state."""
    meta = {"help": help, "kind": kind, "low": low, "high": high, "choices": choices, "env": env,
            "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Run options that are not SageMaker hyperparameters (SageMaker fixes these per instance)."""

    output_dir: Path = _option(None, "where model.tar.gz, metrics.jsonl, checkpoints and failure go (required)",
                               "path")
    checkpoint_dir: Path | None = _option(None, "where checkpoints go and a rerun resumes from (default: "
                                          "OUTPUT_DIR/checkpoints; SageMaker's /opt/ml/checkpoints)", "path")
    seed: int = _option(0, "random seed", "int", low=0, high=_MAX_SEED)
    device: str = _option("auto", "auto | cpu | cuda | cuda:N", "str")
    workers: int | None = _option(None, "decoding processes for streamed data (default: min(4, CPU count))", "int",
                                  low=0, high=256)
    threads: int | None = _option(None, "CPU threads for torch (default: torch's choice)", "int", low=1, high=1024)
    cache_mb: int = _option(4096, "decode data sets up to this size once into memory (0 = always stream)", "int",
                            low=0, high=2**30, metavar="MB")
    max_image_pixels: int = _option(DEFAULT_MAX_IMAGE_PIXELS, "refuse images that declare more pixels than this "
                                    "(width x height) before decoding them", "int", low=1,
                                    high=MAX_IMAGE_PIXELS_LIMIT, metavar="N")
    pretrained: Path | None = _option(None, "ImageNet weights for use_pretrained_model=1 (file or folder)", "path",
                                      env="OPENIC_PRETRAINED_DIR")
    label_format: str = _option("multi-hot", "label format of augmented manifests (SageMaker's content-type "
                                "parameter)", "str", choices=("multi-hot", "class-id"))
    label_attribute: str | None = _option(None, "label key of augmented manifests (SageMaker's AttributeNames[1]); "
                                          "default: the only key besides source-ref and *-metadata", "str",
                                          metavar="NAME")
    precise_bn_batches: int = _option(2, "re-estimate BatchNorm statistics from each epoch's last N training "
                                      "batches before validation (0 keeps MXNet's running averages only)", "int",
                                      low=0, high=1000, metavar="N")
    log_every: int = _option(20, "batches between Speedometer log lines, as SageMaker", "int", low=1, high=10**6,
                             metavar="N")
    resume: bool = _option(True, "ignore checkpoints in --output-dir and start over", "flag-off")
    progress: bool | None = _option(None, "progress bar (default: when stderr is a terminal)", "tri-state")

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ClientError("an output directory is required (--output-dir)")
        for name in ("output_dir", "checkpoint_dir", "pretrained"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("s3://"):  # Path() would fold it into "s3:/..."
                raise ClientError(f"{flag_name(name)} {value}: training writes local files; an s3:// location is "
                                  "staged by openic.train.job.run_job (give it in the options mapping)")
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for f in fields(self):
            _check(f.name, getattr(self, f.name), f.metadata)

    @property
    def decode_workers(self) -> int:
        return self.workers if self.workers is not None else min(4, os.cpu_count() or 1)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(name: str, value: Any, meta: Any) -> None:
    """One option against its declared kind and bounds; the message names the flag, the value and what is valid."""
    if value is None:
        return
    if meta["kind"] == "int":
        low, high = meta["low"], meta["high"]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ClientError(f"{flag_name(name)} {shown(value)} is not valid: expected an integer from {low} to "
                              f"{high}")
    if meta["choices"] and value not in meta["choices"]:
        raise ClientError(f"{flag_name(name)} {value!r} is not valid: expected one of {', '.join(meta['choices'])}")
