"""SageMaker Image Classification hyperparameters: one frozen schema, parsed from SageMaker's string forms.

SageMaker hands every hyperparameter to the container as a JSON string (``"10"``, ``"True"``, ``"10, 20"``), so
``HyperParameters.from_strings`` is the one parser for CLI flags, JSON files and ``hyperparameters.json``. Each
field's metadata (help, kind, choices, range) is the single source for validation, the generated CLI flags
(``openic.cli.hpflags``) and the README table (``HyperParameters.specs()``).

Choices where SageMaker is silent or lenient (spec §1):

* Integers follow SageMaker's schema ``^([1-9][0-9]*)$`` ("10.0", "1.5", "+3", "010" are rejected) or are JSON
  integers. Booleans: True/False/1/0 (any case) or JSON booleans. Surrounding whitespace is ignored.
* SageMaker sets no upper bounds; here every integer has one (``MAX_*`` below) far past any real job, so a value
  like 10**30 is a ClientError naming the parameter, not an overflow or a huge allocation deep in torch/numpy.
* All errors are collected and raised once (``HyperParameterError``, one per line, each starting "The value '<v>'
  is not valid for the '<name>' hyperparameter which expects ...", or naming an unknown or missing name).
* Pair rules checked on construction: checkpoint_frequency <= epochs; top_k <= num_classes (top_k=1 is allowed:
  the doc says > 1 but SageMaker ran it); use_weighted_loss=1 needs multi_label=1; use_pretrained_model=1 needs
  depth 18-200 and 3 channels; resize >= min(H, W) (else no image fits the crop); H and W at least the network's
  total stride (``min_image_side``: 8 px for depths 18-200 and 4 px for 20-110 when H <= 32, four times that
  with the 7x7 stem; so SageMaker's documented 18 at 3,28,28 is valid).
* ``_tuning_objective_metric`` (added by SageMaker's tuner) and ``model_prefix`` are accepted and ignored.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from openic.errors import ClientError, shown
from openic.models.depths import DEPTHS, imagenet_depths, min_image_side

logger = logging.getLogger(__name__)

_IGNORED_NAMES = frozenset({"_tuning_objective_metric"})
_INT = re.compile(r"0|[1-9][0-9]*")
_BOOLS: dict[object, bool] = {True: True, False: False, "true": True, "1": True, "false": False, "0": False}
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

# Upper bounds: what the engine can run, with a wide margin over any real job.
MAX_CLASSES = 100_000  # final FC 2048 x N: 0.8 GB of float32 weights (ImageNet-21k has 21841 classes)
MAX_SAMPLES = 10**12  # only sizes an epoch (samples / batch steps); exact in int64 and float64
MAX_BATCH = 65_536  # images per host step; at 3,224,224 the input alone is 39 GB of float32, activations far more
MAX_EPOCHS = 100_000  # also bounds every count in epochs: checkpoint_frequency, early stopping, lr_scheduler_step
MAX_IMAGE_SIDE = 4096  # H and W: one 3,4096,4096 float32 input is 200 MB, its ResNet activations many GB
# resize >= min(H, W) always has a valid value, and the crop is never larger; decoding one photo at resize 4096
# already takes ~3 GB and ~9 s of CPU (formats.images works in int64), 8192 four times that per loader worker.
MAX_RESIZE = MAX_IMAGE_SIDE


class HyperParameterError(ClientError):
    """One or more invalid hyperparameters; ``errors`` holds one message each, ``str(e)`` joins them by line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        return type(self), (self.errors,)  # so it survives pickling (DataLoader workers, multiprocessing)


@dataclass(frozen=True)
class HyperParameterSpec:
    """One hyperparameter as the CLI generator and the README table see it."""

    name: str
    kind: str  # int, float, bool, string, C,H,W, int list
    required: bool
    default: str | None  # SageMaker's string form; None when required or unset by default
    help: str
    choices: tuple[str, ...]
    expects: str  # what is valid, in the words error messages use

    @property
    def default_text(self) -> str:
        return "required" if self.required else "unset" if self.default is None else self.default or "''"


def _hp(default: Any, help: str, kind: str, choices: tuple = (), high: int | None = None) -> Any:
    """A field whose metadata drives parsing, validation, CLI flags and docs; ranges follow SageMaker's table
    (integers positive, floats in [0, 1]), and integers without choices take an explicit ``high``."""
    assert (kind == "int" and not choices) == (high is not None), "every free integer needs its engine bound"
    low, high = (None, None) if choices else {"int": (1, high), "float": (0, 1)}.get(kind, (None, None))
    meta = {"help": help, "kind": kind, "choices": choices, "low": low, "high": high}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


_EXPECTS = {
    "bool": "True or False", "string": "a string",
    "shape": f"'C,H,W' with C 1 or 3 and H and W from 1 to {MAX_IMAGE_SIDE}, e.g. '3,224,224'",
    "steps": f"comma-separated, strictly increasing positive epochs up to {MAX_EPOCHS}, e.g. '10, 20'",
}


def _expects(meta: Mapping[str, Any]) -> str:
    if meta["choices"]:
        return "one of the following: " + ", ".join(str(c) for c in meta["choices"])
    if meta["kind"] == "float":
        return f"a number between {meta['low']:g} and {meta['high']:g}"
    if meta["kind"] == "int":
        return f"a positive integer up to {meta['high']}"
    return _EXPECTS[meta["kind"]]


def _to_int(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and _INT.fullmatch(v.strip()):
        return int(v.strip())  # past 4300 digits int() raises ValueError too
    raise ValueError(v)


def _to_float(v: object) -> float:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not (number or isinstance(v, str) and _FLOAT.fullmatch(v.strip())):
        raise ValueError(v)
    try:
        x = float(v)  # type: ignore[arg-type]
    except OverflowError:  # a JSON integer past 1e308
        x = math.inf
    if not math.isfinite(x):  # JSON may hold Infinity/NaN; "1e400" reads as inf
        raise ValueError(v)
    return x


def _to_bool(v: object) -> bool:
    key = v if isinstance(v, bool) else str(v).strip().lower() if isinstance(v, (str, int)) else None
    if key not in _BOOLS:
        raise ValueError(v)
    return _BOOLS[key]


def _to_str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(v)
    return v.strip()


def _to_ints(v: object) -> tuple[int, ...]:
    parts = v.split(",") if isinstance(v, str) else v
    if not isinstance(parts, (list, tuple)):
        raise ValueError(v)
    return tuple(_to_int(p) for p in parts)


def _to_shape(v: object) -> tuple[int, int, int]:
    shape = _to_ints(v)
    if len(shape) != 3 or shape[0] not in (1, 3) or not all(1 <= side <= MAX_IMAGE_SIDE for side in shape[1:]):
        raise ValueError(v)
    return shape  # type: ignore[return-value]


def _to_steps(v: object) -> tuple[int, ...]:
    steps = () if isinstance(v, str) and not v.strip() else _to_ints(v)
    if not all(1 <= e <= MAX_EPOCHS for e in steps) or any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(v)
    return steps


def parse_image_shape(value: object, where: str | None = None) -> tuple[int, int, int]:
    """``C,H,W`` (a string or three integers) as the schema accepts it; the one image_shape check for every layer.

    Raises:
        ClientError: naming ``where`` (the hyperparameter, or the file that held the value) and what is valid.
    """
    try:
        return _to_shape(value)
    except (ValueError, TypeError):
        prefix = f"{where}: " if where else ""
        raise ClientError(f"{prefix}image_shape {shown(value)} is not valid; expected {_EXPECTS['shape']}") from None


_PARSERS = {"int": _to_int, "float": _to_float, "bool": _to_bool, "shape": _to_shape, "steps": _to_steps,
            "choice": _to_str, "string": _to_str}


def _coerce(meta: Mapping[str, Any], optional: bool, value: object) -> object:
    """Typed value for one field, or ValueError; the caller words the message."""
    if value is None and (optional or meta["kind"] == "steps"):
        return () if meta["kind"] == "steps" else None
    out = _PARSERS[meta["kind"]](value)
    if meta["choices"] and out not in meta["choices"]:
        raise ValueError(value)
    low, high = meta["low"], meta["high"]
    if (low is not None and out < low) or (high is not None and out > high):  # type: ignore[operator]
        raise ValueError(value)
    return out


def _invalid(name: str, value: object, expects: str) -> str:
    return f"The value '{shown(value, show=str)}' is not valid for the '{name}' hyperparameter which expects {expects}."


def _coerce_all(values: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    typed: dict[str, object] = {}
    errors: list[str] = []
    for f in (f for f in fields(HyperParameters) if f.name in values):
        try:
            typed[f.name] = _coerce(f.metadata, f.default is None, values[f.name])
        except ValueError:
            errors.append(_invalid(f.name, values[f.name], _expects(f.metadata)))
    return typed, errors


def _cross_field_errors(v: Mapping[str, Any]) -> list[str]:
    """Rules that relate two fields; run only when every field is valid on its own."""
    errors = []
    if v["checkpoint_frequency"] is not None and v["checkpoint_frequency"] > v["epochs"]:
        errors.append(_invalid("checkpoint_frequency", v["checkpoint_frequency"], f"a positive integer at most "
                               f"epochs ({v['epochs']})"))
    if v["top_k"] is not None and v["top_k"] > v["num_classes"]:
        errors.append(_invalid("top_k", v["top_k"], f"a positive integer at most num_classes ({v['num_classes']})"))
    if v["use_weighted_loss"] == 1 and v["multi_label"] != 1:
        errors.append(_invalid("use_weighted_loss", 1, "0 unless multi_label is 1 (weighted loss is multi-label only)"))
    c, h, w = v["image_shape"]
    if v["use_pretrained_model"] == 1 and (v["num_layers"] not in imagenet_depths() or c != 3):
        errors.append(_invalid("use_pretrained_model", 1, "0 unless num_layers is one of "
                               f"{', '.join(map(str, imagenet_depths()))} and image_shape has 3 channels "
                               f"(got num_layers {v['num_layers']}, {c} channels)"))
    if v["resize"] is not None and v["resize"] < min(h, w):
        errors.append(_invalid("resize", v["resize"], f"at least {min(h, w)}, the smaller side of image_shape "
                               f"{c},{h},{w}: resize sets every image's shorter side, which must fit the crop"))
    side = min_image_side(v["num_layers"], h)
    if min(h, w) < side:
        errors.append(_invalid("image_shape", f"{c},{h},{w}", f"H and W of at least {side} px for num_layers "
                               f"{v['num_layers']} (the network downsamples by {side} or more)"))
    return errors


@dataclass(frozen=True, kw_only=True)
class HyperParameters:
    """SageMaker's image-classification hyperparameters, validated and normalized on construction.

    Fields accept their typed value or SageMaker's string form; ``__post_init__`` converts and validates
    both (raising ``HyperParameterError``, a ``ClientError``/``ValueError``), so every instance is valid.
    """

    num_classes: int = _hp(MISSING, "Number of output classes (for multi_label=1, the number of labels).", "int",
                           high=MAX_CLASSES)
    num_training_samples: int = _hp(MISSING, "Training images; sizes an epoch for the learning-rate schedule.", "int",
                                    high=MAX_SAMPLES)
    augmentation_type: str | None = _hp(
        None, "Training augmentation. crop: random crop + horizontal flip; crop_color: + random hue/saturation/"
        "lightness shifts (up to 36/50/50); crop_color_transform: + rotation (up to 10 degrees), shear (0.1) and "
        "aspect change (0.25). Unset: centre crop only.", "choice", ("crop", "crop_color", "crop_color_transform"))
    beta_1: float = _hp(0.9, "Adam beta1: decay of the first-moment estimate.", "float")
    beta_2: float = _hp(0.999, "Adam beta2: decay of the second-moment estimate.", "float")
    checkpoint_frequency: int | None = _hp(None, "Save a checkpoint every N epochs and keep them all (N <= epochs); "
                                           "unset keeps only the epoch with the best validation accuracy.", "int",
                                           high=MAX_EPOCHS)
    early_stopping: bool = _hp(False, "Stop training when validation accuracy stops improving.", "bool")
    early_stopping_min_epochs: int = _hp(10, "Epochs to run before early stopping may trigger.", "int", high=MAX_EPOCHS)
    early_stopping_patience: int = _hp(5, "Epochs without improvement before early stopping.", "int", high=MAX_EPOCHS)
    early_stopping_tolerance: float = _hp(0.0, "Relative improvement (acc - best) / best below which an epoch "
                                          "counts as no improvement.", "float")
    epochs: int = _hp(30, "Number of passes over the training data.", "int", high=MAX_EPOCHS)
    eps: float = _hp(1e-8, "Epsilon added to the denominator by adam and rmsprop.", "float")
    gamma: float = _hp(0.9, "rmsprop decay of the squared-gradient moving average.", "float")
    image_shape: tuple[int, int, int] = _hp(
        (3, 224, 224), "Network input as channels,height,width in pixels. Training crops images to HxW; inference "
        "resizes them to HxW. C=1 is grayscale.", "shape")
    kv_store: str | None = _hp(None, "Multi-host weight-update mode; ignored on one machine.", "choice",
                               ("dist_sync", "dist_async"))
    learning_rate: float = _hp(0.1, "Initial learning rate.", "float")
    lr_scheduler_factor: float = _hp(0.1, "Learning-rate multiplier applied at each lr_scheduler_step.", "float")
    lr_scheduler_step: tuple[int, ...] = _hp((), "Epochs after which the learning rate is multiplied by "
                                             "lr_scheduler_factor.", "steps")
    mini_batch_size: int = _hp(32, "Images per step per host, split across its GPUs; at most the number of "
                               "training images.", "int", high=MAX_BATCH)
    momentum: float = _hp(0.9, "Momentum for sgd and nag (SageMaker's effective default is 0.9).", "float")
    multi_label: int = _hp(0, "1: multi-label training with multi-hot labels; 0: one class per image.", "int", (0, 1))
    num_layers: int = _hp(152, "ResNet depth: 18-200 for large images, 20-110 (3-stage) for small ones.", "int",
                          tuple(DEPTHS))
    optimizer: str = _hp("sgd", "Optimizer.", "choice", ("sgd", "adam", "rmsprop", "nag"))
    precision_dtype: str = _hp("float32", "float16 trains with mixed precision; float32 in full precision.",
                               "choice", ("float32", "float16"))
    resize: int | None = _hp(None, "Pixels the shorter side of each training image is resized to before cropping; "
                             "at least the smaller of H and W.", "int", high=MAX_RESIZE)
    top_k: int | None = _hp(None, "Also report top-k accuracy during training (SageMaker's doc says k > 1, but it "
                            "accepts 1); at most num_classes.", "int", high=MAX_CLASSES)
    use_pretrained_model: int = _hp(0, "1: start from ImageNet-pretrained weights of depth num_layers (18-200, "
                                    "3 channels) and fine-tune.", "int", (0, 1))
    use_weighted_loss: int = _hp(0, "1: weight the loss by the class distribution (multi_label=1 only).", "int",
                                 (0, 1))
    weight_decay: float = _hp(0.0001, "L2 weight decay for sgd and nag.", "float")
    model_prefix: str = _hp("", "Undocumented SageMaker field; accepted and ignored.", "string")

    def __post_init__(self) -> None:
        typed, errors = _coerce_all({f.name: getattr(self, f.name) for f in fields(self)})
        if not errors:
            errors = _cross_field_errors(typed)
        if errors:
            raise HyperParameterError(errors)
        for name, value in typed.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_strings(cls, values: Mapping[str, object]) -> HyperParameters:
        """Parse SageMaker's string map (JSON numbers, booleans, lists, null for unset also accepted).

        Raises HyperParameterError listing every unknown name (with the closest valid one), missing name and bad value.
        """
        names = [f.name for f in fields(cls)]
        errors = [_unknown(key, names) for key in values if key not in names and key not in _IGNORED_NAMES]
        if missing := [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]:
            errors.append(f"Missing required hyperparameter(s): {', '.join(missing)}.")
        typed, value_errors = _coerce_all(values)
        errors += value_errors
        if errors:
            raise HyperParameterError(errors)
        return cls(**typed)  # type: ignore[arg-type]

    @classmethod
    def check_partial(cls, values: Mapping[str, object]) -> dict[str, str]:
        """Check some hyperparameters on their own (unknown names, bad values; not missing or cross-field rules),
        as ``Estimator.set_hyperparameters`` does before the set is complete; returns SageMaker's string map."""
        names = [f.name for f in fields(cls)]
        errors = [_unknown(key, names) for key in values if key not in names and key not in _IGNORED_NAMES]
        errors += _coerce_all(values)[1]
        if errors:
            raise HyperParameterError(errors)
        return {k: sagemaker_string(v) for k, v in values.items()}

    def to_dict(self) -> dict[str, object]:
        """Every field, JSON-able, in SageMaker's forms (``image_shape`` "3,224,224"); ``from_strings`` inverts it."""
        return {f.name: _json_form(f.metadata["kind"], getattr(self, f.name)) for f in fields(self)}

    def to_strings(self) -> dict[str, str]:
        """The set fields as a SageMaker ``hyperparameters.json`` string map (unset optional fields left out)."""
        return {k: sagemaker_string(v) for k, v in self.to_dict().items() if v is not None}

    def changed(self) -> dict[str, object]:
        """Fields that differ from their defaults (required ones always), in ``to_dict`` form."""
        current = self.to_dict()
        defaults = {s.name: s.default for s in self.specs()}
        return {k: v for k, v in current.items() if (None if v is None else sagemaker_string(v)) != defaults[k]}

    @classmethod
    def specs(cls) -> list[HyperParameterSpec]:
        """Name, kind, default, help and choices of every field, in declaration order."""
        kinds = {"shape": "C,H,W", "steps": "int list", "choice": "string"}
        out = []
        for f in fields(cls):
            default = None if f.default is MISSING else _json_form(f.metadata["kind"], f.default)
            out.append(HyperParameterSpec(
                name=f.name, kind=kinds.get(f.metadata["kind"], f.metadata["kind"]), required=f.default is MISSING,
                default=None if default is None else sagemaker_string(default), help=f.metadata["help"],
                choices=tuple(str(c) for c in f.metadata["choices"]), expects=_expects(f.metadata)))
        return out


def _json_form(kind: str, value: Any) -> object:
    """SageMaker's form of a typed value: tuples become "3,224,224" / "10,20", an empty tuple None."""
    if kind in ("shape", "steps"):
        return ",".join(map(str, value)) or None
    return value


def sagemaker_string(value: object) -> str:
    """The string SageMaker would pass for a typed value (floats keep full precision: ``repr``)."""
    return repr(value) if isinstance(value, float) else str(value)


def _unknown(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key).lower(), names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown hyperparameter '{key}'.{hint} Valid names: {', '.join(sorted(names))}."


def load_hyperparameters_file(path: str | Path) -> dict[str, object]:
    """Read a JSON object of name -> value (SageMaker's ``hyperparameters.json`` or a user file).

    Values stay as written (strings, numbers, booleans, lists); ``HyperParameters.from_strings`` parses them.
    Raises FileNotFoundError for a missing file and ClientError naming the file for anything else that stops it
    being read (a directory, no permission, bad JSON, a non-object, hostile nesting or number lengths).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as e:
        raise ClientError(f"{path}: not a valid UTF-8 JSON hyperparameters file: {e}") from e
    except OSError as e:  # IsADirectoryError, PermissionError, ...
        raise ClientError(f"{path}: cannot read the hyperparameters file: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:  # its message gives the position
        raise ClientError(f"{path}: not a valid UTF-8 JSON hyperparameters file: {e}") from e
    except ValueError as e:  # json reads integers with int(), which refuses more than this many digits
        raise ClientError(f"{path}: not a valid hyperparameters file: a number with more than "
                          f"{sys.get_int_max_str_digits()} digits") from e
    except RecursionError as e:
        raise ClientError(f"{path}: not a valid hyperparameters file: values nested too deeply to read") from e
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a JSON object mapping hyperparameter names to values, "
                          f"got {type(data).__name__}")
    return data
