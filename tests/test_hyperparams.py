"""HyperParameters: SageMaker's names, string forms, defaults, ranges, error texts and generated CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openic.cli.hpflags import add_cli_arguments, from_cli_namespace
from openic.errors import ClientError
from openic.formats.images import resized_hw
from openic.hyperparams import (
    HyperParameterError,
    HyperParameters,
    load_hyperparameters_file,
    parse_image_shape,
    sagemaker_string,
)
from openic.models.depths import DEPTHS
from openic.train.data_checks import cross_check
from openic.train.sagemaker_log import parameter_block

BASE = {"num_classes": "10", "num_training_samples": "100"}

SAGEMAKER_NAMES = {
    "num_classes", "num_training_samples", "augmentation_type", "beta_1", "beta_2", "checkpoint_frequency",
    "early_stopping", "early_stopping_min_epochs", "early_stopping_patience", "early_stopping_tolerance", "epochs",
    "eps", "gamma", "image_shape", "kv_store", "learning_rate", "lr_scheduler_factor", "lr_scheduler_step",
    "mini_batch_size", "momentum", "multi_label", "num_layers", "optimizer", "precision_dtype", "resize", "top_k",
    "use_pretrained_model", "use_weighted_loss", "weight_decay", "model_prefix",
}


def parse(**overrides):
    return HyperParameters.from_strings({**BASE, **overrides})


def test_field_names_are_sagemakers():
    assert {f.name for f in dataclasses.fields(HyperParameters)} == SAGEMAKER_NAMES


def test_defaults_match_sagemaker():
    hp = HyperParameters(num_classes=2, num_training_samples=10)
    expected = dict(
        augmentation_type=None, beta_1=0.9, beta_2=0.999, checkpoint_frequency=None, early_stopping=False,
        early_stopping_min_epochs=10, early_stopping_patience=5, early_stopping_tolerance=0.0, epochs=30, eps=1e-8,
        gamma=0.9, image_shape=(3, 224, 224), kv_store=None, learning_rate=0.1, lr_scheduler_factor=0.1,
        lr_scheduler_step=(), mini_batch_size=32, momentum=0.9, multi_label=0, num_layers=152, optimizer="sgd",
        precision_dtype="float32", resize=None, top_k=None, use_pretrained_model=0, use_weighted_loss=0,
        weight_decay=0.0001, model_prefix="",
    )
    assert {k: getattr(hp, k) for k in expected} == expected


VALID = [
    ("num_classes", "10", 10), ("num_classes", 7, 7), ("num_classes", " 3 ", 3),
    ("num_training_samples", "50000", 50000),
    ("augmentation_type", "crop", "crop"), ("augmentation_type", "crop_color", "crop_color"),
    ("augmentation_type", "crop_color_transform", "crop_color_transform"), ("augmentation_type", None, None),
    ("beta_1", "0.5", 0.5), ("beta_1", "0", 0.0), ("beta_1", "1", 1.0), ("beta_1", 0.25, 0.25),
    ("beta_2", "0.999", 0.999),
    ("checkpoint_frequency", "5", 5), ("checkpoint_frequency", "30", 30),
    ("early_stopping", "True", True), ("early_stopping", "False", False), ("early_stopping", "true", True),
    ("early_stopping", "false", False), ("early_stopping", "1", True), ("early_stopping", "0", False),
    ("early_stopping", True, True), ("early_stopping", False, False),
    ("early_stopping_min_epochs", "3", 3), ("early_stopping_patience", "1", 1),
    ("early_stopping_tolerance", "0.0", 0.0), ("early_stopping_tolerance", "1", 1.0),
    ("early_stopping_tolerance", "0.05", 0.05),
    ("epochs", "1", 1), ("epochs", "10", 10), ("epochs", 10, 10),
    ("eps", "1e-8", 1e-8), ("eps", "1E-08", 1e-8), ("eps", ".5", 0.5), ("eps", 1e-8, 1e-8),
    ("gamma", "0.9", 0.9),
    ("image_shape", "3,28,28", (3, 28, 28)), ("image_shape", "1,32,32", (1, 32, 32)),
    ("image_shape", " 3, 224, 224 ", (3, 224, 224)), ("image_shape", [3, 32, 32], (3, 32, 32)),
    ("image_shape", "3,150,250", (3, 150, 250)),
    ("kv_store", "dist_sync", "dist_sync"), ("kv_store", "dist_async", "dist_async"),
    ("learning_rate", "0.01", 0.01), ("lr_scheduler_factor", "0.5", 0.5),
    ("lr_scheduler_step", "10, 20", (10, 20)), ("lr_scheduler_step", "10", (10,)), ("lr_scheduler_step", "", ()),
    ("lr_scheduler_step", "5,6,7", (5, 6, 7)), ("lr_scheduler_step", [5, 8], (5, 8)),
    ("lr_scheduler_step", None, ()),
    ("mini_batch_size", "8", 8), ("momentum", "0", 0.0), ("momentum", "0.99", 0.99),
    ("multi_label", "1", 1), ("multi_label", "0", 0), ("multi_label", 1, 1),
    *[("num_layers", str(d), d) for d in tuple(DEPTHS)],
    *[("optimizer", o, o) for o in ("sgd", "adam", "rmsprop", "nag")],
    ("precision_dtype", "float32", "float32"), ("precision_dtype", "float16", "float16"),
    ("resize", "256", 256), ("resize", "224", 224),
    ("top_k", "1", 1), ("top_k", "5", 5), ("top_k", "10", 10),
    ("use_pretrained_model", "1", 1), ("use_pretrained_model", "0", 0), ("use_weighted_loss", "0", 0),
    ("weight_decay", "0.0005", 0.0005), ("model_prefix", "", ""), ("model_prefix", "ic", "ic"),
]


@pytest.mark.parametrize(("name", "value", "expected"), VALID)
def test_valid_value(name, value, expected):
    hp = parse(**{name: value})
    assert getattr(hp, name) == expected


INVALID = [
    *[("num_classes", v) for v in ("0", "-1", "abc", "1.5", "10.0", "", "1e3", "+3", "010", True, 2.0, None)],
    ("num_training_samples", "0"), ("num_training_samples", "many"),
    ("augmentation_type", "rotate"), ("augmentation_type", "CROP"), ("augmentation_type", ""),
    ("augmentation_type", 1),
    *[("beta_1", v) for v in ("1.5", "-0.1", "abc", "nan", "inf", "", "1_0", True,
                                    float("inf"), float("nan"))],
    ("beta_2", "2"),
    ("checkpoint_frequency", "0"), ("checkpoint_frequency", "31"), ("checkpoint_frequency", "abc"),
    *[("early_stopping", v) for v in ("yes", "2", "", 2, 1.0, None)],
    ("early_stopping_min_epochs", "0"), ("early_stopping_patience", "0"), ("early_stopping_patience", "2.5"),
    ("early_stopping_tolerance", "1.1"), ("early_stopping_tolerance", "-0.5"),
    *[("epochs", v) for v in ("0", "1.5", "10.0", "ten", None)],
    ("eps", "2"), ("gamma", "-1"),
    *[("image_shape", v) for v in ("4,28,28", "3,28", "3,28,28,1", "3,0,28", "3x28x28", "", "2,28,28",
                                   "3,28.5,28", [3, 28], None)],
    ("kv_store", "local"), ("kv_store", "device"),
    ("learning_rate", "1.5"), ("learning_rate", "-0.1"), ("lr_scheduler_factor", "2"),
    *[("lr_scheduler_step", v) for v in ("20,10", "10,10", "0,10", "10;20", "a", "10.5", "10,", [20, 10])],
    ("mini_batch_size", "0"), ("mini_batch_size", "32.0"), ("momentum", "1.01"),
    ("multi_label", "2"), ("multi_label", "-1"), ("multi_label", "true"),
    *[("num_layers", v) for v in ("19", "0", "resnet18", "1000")],
    ("optimizer", "SGD"), ("optimizer", "adagrad"), ("precision_dtype", "bfloat16"), ("precision_dtype", "fp16"),
    ("resize", "0"), ("resize", "-5"), ("resize", "abc"), ("resize", "20"),  # 20 < 224: no image fits the crop
    ("top_k", "0"), ("top_k", "11"), ("top_k", "abc"),  # 11 > num_classes
    ("use_pretrained_model", "2"), ("use_weighted_loss", "2"), ("use_weighted_loss", "1"),  # needs multi_label=1
    ("weight_decay", "1.5"), ("model_prefix", 5),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_names_parameter_value_and_what_is_valid(name, value):
    with pytest.raises(HyperParameterError) as info:
        parse(**{name: value})
    assert len(info.value.errors) == 1
    start = f"The value '{value}' is not valid for the '{name}' hyperparameter which expects "
    assert str(info.value).startswith(start)
    assert isinstance(info.value, ClientError) and isinstance(info.value, ValueError)


def test_message_wording_matches_sagemaker():
    with pytest.raises(ClientError) as info:
        parse(epochs="abc")
    assert str(info.value) == ("The value 'abc' is not valid for the 'epochs' hyperparameter which expects "
                               "a positive integer up to 100000.")
    with pytest.raises(ClientError, match=r"expects one of the following: sgd, adam, rmsprop, nag\.$"):
        parse(optimizer="adagrad")
    with pytest.raises(ClientError, match=r"expects a positive integer at most epochs \(5\)"):
        parse(epochs="5", checkpoint_frequency="6")


def test_unknown_name_suggests_closest():
    with pytest.raises(HyperParameterError) as info:
        parse(mini_batch_siz="32")
    msg = str(info.value)
    assert msg.startswith("Unknown hyperparameter 'mini_batch_siz'. Did you mean 'mini_batch_size'? Valid names: ")
    assert all(name in msg for name in SAGEMAKER_NAMES)
    with pytest.raises(HyperParameterError, match="Did you mean 'num_classes'"):
        parse(Num_Classes="3")
    with pytest.raises(HyperParameterError) as info:
        parse(zzz="1")
    assert "Did you mean" not in str(info.value)


def test_tuner_metric_key_is_ignored():
    hp = parse(_tuning_objective_metric="validation:accuracy")
    assert hp == parse()


def test_missing_required_names_them():
    with pytest.raises(HyperParameterError, match=r"^Missing required hyperparameter\(s\): num_classes, "
                       r"num_training_samples\.$"):
        HyperParameters.from_strings({})
    with pytest.raises(HyperParameterError, match=r"Missing required hyperparameter\(s\): num_training_samples\.$"):
        HyperParameters.from_strings({"num_classes": "3"})


def test_all_errors_are_collected_one_per_line():
    with pytest.raises(HyperParameterError) as info:
        HyperParameters.from_strings({"num_classes": "abc", "epochs": "1.5", "mini_batch_siz": "3"})
    errors = info.value.errors
    assert len(errors) == 4  # unknown, missing, two bad values
    assert str(info.value).splitlines() == errors
    assert errors[0].startswith("Unknown hyperparameter 'mini_batch_siz'")
    assert errors[1].startswith("Missing required hyperparameter(s): num_training_samples")
    assert "'num_classes'" in errors[2] and "'epochs'" in errors[3]


def test_cross_field_rules():
    assert parse(num_layers="18", image_shape="3,28,28").num_layers == 18  # SageMaker's documented example
    assert parse(num_layers="20", image_shape="3,4,4").image_shape == (3, 4, 4)
    assert parse(num_layers="18", image_shape="3,8,8").image_shape == (3, 8, 8)
    with pytest.raises(HyperParameterError, match="'image_shape' hyperparameter .* at least 8 px for num_layers 18"):
        parse(num_layers="18", image_shape="3,7,7")
    with pytest.raises(HyperParameterError, match="at least 4 px for num_layers 20"):
        parse(num_layers="20", image_shape="3,3,3")
    with pytest.raises(HyperParameterError, match="'use_pretrained_model'.*got num_layers 20"):
        parse(use_pretrained_model="1", num_layers="20", image_shape="3,32,32")
    with pytest.raises(HyperParameterError, match="'use_pretrained_model'.*1 channels"):
        parse(use_pretrained_model="1", num_layers="18", image_shape="1,224,224")
    assert parse(use_weighted_loss="1", multi_label="1").use_weighted_loss == 1
    assert parse(resize="30", image_shape="3,28,40").resize == 30  # fits landscape images; cross_check decides
    with pytest.raises(HyperParameterError, match="'resize'.*at least 28"):
        parse(resize="27", image_shape="3,28,40")


def test_constructor_validates_and_normalizes():
    hp = HyperParameters(num_classes="10", num_training_samples=100, image_shape=[1, 32, 32],  # type: ignore
                         lr_scheduler_step="3, 6", early_stopping="true")  # type: ignore
    assert (hp.num_classes, hp.image_shape, hp.lr_scheduler_step, hp.early_stopping) == (10, (1, 32, 32), (3, 6), True)
    with pytest.raises(HyperParameterError, match="'epochs'"):
        HyperParameters(num_classes=2, num_training_samples=10, epochs=0)


def test_frozen_and_hashable():
    hp = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.epochs = 3  # type: ignore[misc]
    assert hash(hp) == hash(parse()) and hp == parse()
    assert dataclasses.replace(hp, epochs=3).epochs == 3
    with pytest.raises(HyperParameterError):
        dataclasses.replace(hp, epochs=-1)


# The AWS incremental-training example's config, as SageMaker writes it to hyperparameters.json.
AWS_EXAMPLE = {
    "num_layers": "18", "image_shape": "3,28,28", "num_classes": "10", "num_training_samples": "50000",
    "mini_batch_size": "128", "epochs": "3", "learning_rate": "0.1", "top_k": "5", "resize": "32",
    "augmentation_type": "crop_color", "checkpoint_frequency": "1", "use_pretrained_model": "0", "model_prefix": "",
}


@pytest.mark.parametrize("values", [
    BASE,
    AWS_EXAMPLE,
    {**BASE, "eps": "1e-8", "learning_rate": "0.30000000000000004", "lr_scheduler_step": "10, 20",
     "early_stopping": "True", "kv_store": "dist_sync", "image_shape": "1,32,32", "num_layers": "20"},
    {"num_classes": 3, "num_training_samples": 9, "multi_label": 1, "use_weighted_loss": 1, "momentum": 0,
     "image_shape": [3, 64, 48], "lr_scheduler_step": [2, 4]},
])
def test_round_trip(values):
    hp = HyperParameters.from_strings(values)
    as_dict = hp.to_dict()
    assert list(as_dict) == [f.name for f in dataclasses.fields(HyperParameters)]
    assert HyperParameters.from_strings(json.loads(json.dumps(as_dict))) == hp
    strings = hp.to_strings()
    assert all(isinstance(v, str) for v in strings.values())
    assert HyperParameters.from_strings(strings) == hp
    assert HyperParameters.from_strings(hp.changed()) == hp


@settings(max_examples=60, deadline=None)
@given(lr=st.floats(0, 1), epochs=st.integers(1, 100_000), steps=st.lists(st.integers(1, 1000), unique=True))
def test_round_trip_property(lr, epochs, steps):
    hp = parse(learning_rate=lr, epochs=str(epochs), lr_scheduler_step=",".join(map(str, sorted(steps))))
    assert HyperParameters.from_strings(hp.to_strings()) == hp
    assert hp.learning_rate == lr and hp.lr_scheduler_step == tuple(sorted(steps))


def test_to_dict_forms():
    d = HyperParameters.from_strings(AWS_EXAMPLE).to_dict()
    assert d["image_shape"] == "3,28,28" and d["lr_scheduler_step"] is None and d["kv_store"] is None
    assert d["epochs"] == 3 and d["early_stopping"] is False and d["momentum"] == 0.9
    s = parse(lr_scheduler_step="10, 20").to_strings()
    assert s["lr_scheduler_step"] == "10,20" and s["early_stopping"] == "False" and s["eps"] == "1e-08"
    assert "top_k" not in s and "resize" not in s


def test_changed_lists_only_non_defaults():
    assert parse().changed() == {"num_classes": 10, "num_training_samples": 100}
    assert parse(momentum="0.90", epochs="30").changed() == {"num_classes": 10, "num_training_samples": 100}
    assert parse(momentum="0", image_shape="3,32,32", top_k="2").changed() == {
        "num_classes": 10, "num_training_samples": 100, "image_shape": "3,32,32", "momentum": 0.0, "top_k": 2}


def test_specs_describe_every_field():
    specs = HyperParameters.specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(HyperParameters)]
    by_name = {s.name: s for s in specs}
    assert by_name["num_classes"].required and by_name["num_classes"].default_text == "required"
    assert by_name["image_shape"].default == "3,224,224" and by_name["image_shape"].kind == "C,H,W"
    assert by_name["momentum"].default == "0.9" and by_name["eps"].default == "1e-08"
    assert by_name["top_k"].default is None and by_name["top_k"].default_text == "unset"
    assert by_name["num_layers"].choices == tuple(str(d) for d in tuple(DEPTHS))
    assert by_name["model_prefix"].default_text == "''"
    assert all(s.help and s.expects for s in specs)


def test_format_log_block():
    lines = parameter_block(parse(num_layers="18", top_k="2", image_shape="3,32,32"))
    assert lines[0] == "---- Parameters ----" and lines[-1] == "--------------------"
    assert lines[1:4] == ["num_layers: 18", "data type: <type 'numpy.float32'>", "epochs: 30"]
    for line in ("kv_store: device", "top_k: 2", "augmentation_type: None", "momentum: 0.9", "image_shape: 3,32,32",
                 "checkpoint_frequency not set, will store the best model"):
        assert line in lines
    assert "checkpoint_frequency: 5" in parameter_block(parse(checkpoint_frequency="5"))


def test_cross_check_messages():
    hp = parse(mini_batch_size="32", image_shape="3,28,28", num_layers="20")
    cross_check(hp, num_images=100, label_width=1, min_image_hw=(28, 28))
    with pytest.raises(ClientError, match=r"^The number of input images must be bigger or equal to the "
                       r"mini_batch_size\. The data has 10 images and mini_batch_size is 32\.$"):
        cross_check(hp, num_images=10)
    with pytest.raises(ClientError, match=r"^The data has 3 labels per image but multi_label is 0"):
        cross_check(hp, label_width=3)
    ml = parse(multi_label="1", num_classes="5")
    cross_check(ml, label_width=5)
    with pytest.raises(ClientError, match=r"^Mismatch between number of labels in the multi-label data \(4\) and "
                       r"the num_classes parameter \(5\)\.$"):
        cross_check(ml, label_width=4)


def test_cross_check_image_size():
    with pytest.raises(ClientError, match=r"An image of 20x30 pixels \(height x width\) and resize is not set, "
                       r"smaller than the 28x28 crop of image_shape 3,28,28; set resize to at least 28"):
        cross_check(parse(image_shape="3,28,28", num_layers="20"), min_image_hw=(20, 30))
    cross_check(parse(image_shape="3,28,28", num_layers="20", resize="28"), min_image_hw=(20, 30))
    hp = parse(image_shape="3,28,40", num_layers="20", resize="30")
    cross_check(hp, min_image_hw=(300, 600))  # landscape: 30x60 after resize
    with pytest.raises(ClientError, match=r"An image of 600x300 .* is 60x30 after resize=30, smaller than the 28x40"):
        cross_check(hp, min_image_hw=(600, 300))


def test_cross_check_collects_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="openic.hyperparams"):
        with pytest.raises(HyperParameterError) as info:
            cross_check(parse(num_training_samples="100"), num_images=4, label_width=2)
    assert len(info.value.errors) == 2
    assert "num_training_samples is 100 but the training data has 4 images" in caplog.text


def test_resized_hw_follows_mxnet_integer_rule():
    assert resized_hw((300, 400), 224) == (224, 298)
    assert resized_hw((400, 300), 224) == (298, 224)
    assert resized_hw((50, 50), 32) == (32, 32)
    assert resized_hw((17, 33), None) == (17, 33)


def test_error_pickles():
    err = pickle.loads(pickle.dumps(HyperParameterError(["a", "b"])))
    assert err.errors == ["a", "b"] and str(err) == "a\nb"


def test_load_hyperparameters_file(tmp_path):
    good = tmp_path / "hyperparameters.json"
    good.write_text(json.dumps(AWS_EXAMPLE))
    assert HyperParameters.from_strings(load_hyperparameters_file(good)).num_layers == 18
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "epochs": "3",\n  "num_classes" 10\n}')
    with pytest.raises(ClientError, match=r"bad\.json: not a valid UTF-8 JSON .*line 3 column 17"):
        load_hyperparameters_file(bad)
    arr = tmp_path / "list.json"
    arr.write_text("[1, 2]")
    with pytest.raises(ClientError, match=r"list\.json: expected a JSON object .* got list"):
        load_hyperparameters_file(arr)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ClientError, match=r"bin\.json: not a valid UTF-8 JSON .*can't decode byte 0xff"):
        load_hyperparameters_file(binary)
    with pytest.raises(FileNotFoundError):
        load_hyperparameters_file(tmp_path / "missing.json")


def make_parser():
    parser = argparse.ArgumentParser(prog="openic train")
    parser.add_argument("--hyperparameters")
    add_cli_arguments(parser)
    return parser


def test_cli_has_one_flag_per_field_with_default_in_help():
    parser = make_parser()
    actions = {a.dest: a for a in parser._actions}
    for spec in HyperParameters.specs():
        action = actions[spec.name]
        assert action.option_strings == [f"--{spec.name}"] and action.default is None
        assert f"Default: {spec.default_text}." in action.help
    text = parser.format_help()
    assert "--mini_batch_size" in text and "Default: 32." in " ".join(text.split())


def test_cli_flags_override_file_values(tmp_path):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({**BASE, "epochs": "5", "num_layers": "50"}))
    ns = make_parser().parse_args(["--hyperparameters", str(path), "--num_layers", "18", "--image_shape", "3,28,28"])
    flags = from_cli_namespace(ns)
    assert flags == {"num_layers": "18", "image_shape": "3,28,28"}
    hp = HyperParameters.from_strings({**load_hyperparameters_file(ns.hyperparameters), **flags})
    assert (hp.epochs, hp.num_layers, hp.image_shape) == (5, 18, (3, 28, 28))


def test_cli_bad_value_uses_schema_error():
    ns = make_parser().parse_args(["--num_classes", "2", "--num_training_samples", "9", "--optimizer", "adagrad"])
    with pytest.raises(HyperParameterError, match="'adagrad' is not valid for the 'optimizer' hyperparameter"):
        HyperParameters.from_strings(from_cli_namespace(ns))


# --------------------------------------------------------------------------- bounds and hostile input

BIG = 10**30  # overflows int64 in torch/numpy


@pytest.mark.parametrize(("name", "value", "expects"), [
    ("num_classes", BIG, "a positive integer up to 100000."), ("num_classes", str(BIG), "up to 100000."),
    ("num_classes", "100001", "up to 100000."), ("num_training_samples", 10**12 + 1, "up to 1000000000000."),
    ("mini_batch_size", "65537", "up to 65536."), ("epochs", "100001", "up to 100000."),
    ("checkpoint_frequency", BIG, "up to 100000."), ("early_stopping_min_epochs", "100001", "up to 100000."),
    ("early_stopping_patience", BIG, "up to 100000."), ("top_k", BIG, "up to 100000."),
    ("resize", "100000", "up to 4096."), ("resize", "4097", "up to 4096."), ("resize", BIG, "up to 4096."),
    ("image_shape", "3,4097,224", "H and W from 1 to 4096"), ("image_shape", [3, 224, BIG], "H and W from 1 to 4096"),
    ("lr_scheduler_step", "10, 100001", "epochs up to 100000"), ("lr_scheduler_step", [BIG], "epochs up to 100000"),
])
def test_integers_past_the_engine_bound_name_the_parameter(name, value, expects):
    with pytest.raises(HyperParameterError) as info:
        parse(**{name: value})
    [message] = info.value.errors
    assert message.startswith(f"The value '{value}' is not valid for the '{name}' hyperparameter which expects ")
    assert expects in message


def test_bounds_are_inclusive():
    hp = parse(num_classes="100000", num_training_samples=str(10**12), mini_batch_size="65536", epochs="100000",
               checkpoint_frequency="100000", early_stopping_min_epochs="100000", early_stopping_patience="100000",
               top_k="100000", image_shape="3,4096,4096", resize="4096", lr_scheduler_step="1, 100000")
    assert (hp.num_classes, hp.resize, hp.image_shape, hp.lr_scheduler_step) == (100000, 4096, (3, 4096, 4096),
                                                                                (1, 100000))


def test_every_integer_field_has_an_upper_bound_shown_in_docs_and_help():
    ints = [f for f in dataclasses.fields(HyperParameters) if f.metadata["kind"] == "int" and not f.metadata["choices"]]
    assert len(ints) == 9
    specs = {s.name: s for s in HyperParameters.specs()}
    help_text = " ".join(make_parser().format_help().split())
    for f in ints:
        assert isinstance(f.metadata["high"], int) and f.metadata["low"] == 1
        assert specs[f.name].expects == f"a positive integer up to {f.metadata['high']}"
    assert "Valid: a positive integer up to 100000. Default: 30." in help_text
    assert "H and W from 1 to 4096" in specs["image_shape"].expects
    assert "epochs up to 100000" in specs["lr_scheduler_step"].expects


def test_huge_json_number_for_a_float_is_a_client_error_with_a_short_echo():
    value = 10**400  # 401 digits: float() raises OverflowError
    with pytest.raises(HyperParameterError) as info:
        parse(learning_rate=value)
    assert str(info.value) == (f"The value '{str(value)[:40]}...' is not valid for the 'learning_rate' hyperparameter "
                               "which expects a number between 0 and 1.")
    with pytest.raises(HyperParameterError, match=r"^The value '1{40}\.\.\.' is not valid for the 'num_classes'"):
        parse(num_classes="1" * 5000)  # past Python's 4300-digit int() limit
    with pytest.raises(HyperParameterError, match=r"^The value '.{1,43}' is not valid for the 'epochs'"):
        parse(epochs=10**5000)  # str() itself refuses an int this long


def test_parse_image_shape_and_sagemaker_string_are_the_schema_rules():
    assert parse_image_shape("3, 28, 28") == (3, 28, 28) and parse_image_shape([1, 4096, 4096]) == (1, 4096, 4096)
    with pytest.raises(ClientError, match=r"^meta\.json: image_shape \[3, 0, 32\] is not valid; expected 'C,H,W'"):
        parse_image_shape([3, 0, 32], "meta.json")
    with pytest.raises(ClientError, match=r"^image_shape '3,4097,4' is not valid; .* from 1 to 4096"):
        parse_image_shape("3,4097,4")
    with pytest.raises(ClientError, match=r"image_shape '3,9{37}\.\.\. is not valid"):
        parse_image_shape("3," + "9" * 500 + ",3")
    assert [sagemaker_string(v) for v in (0.1, 1e-8, 30, True, "3,224,224")] == ["0.1", "1e-08", "30", "True",
                                                                                 "3,224,224"]


def test_load_hyperparameters_file_rejects_unreadable_and_hostile_files(tmp_path, monkeypatch):
    with pytest.raises(ClientError, match=rf"^{tmp_path}: cannot read the hyperparameters file: Is a directory"):
        load_hyperparameters_file(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text('{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ClientError, match=r"deep\.json: not a valid hyperparameters file: values nested too deeply"):
        load_hyperparameters_file(deep)
    long = tmp_path / "long.json"
    long.write_text('{"learning_rate": ' + "1" * 5000 + "}")
    with pytest.raises(ClientError, match=r"long\.json: not a valid hyperparameters file: a number with more than "
                       r"4300 digits"):
        load_hyperparameters_file(long)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**BASE, "learning_rate": 10**400}))
    with pytest.raises(HyperParameterError, match=r"'learning_rate' hyperparameter which expects a number"):
        HyperParameters.from_strings(load_hyperparameters_file(big))
    locked = tmp_path / "locked.json"
    locked.write_text("{}")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_text", denied)  # root reads chmod-000 files, so fake the refusal
    with pytest.raises(ClientError, match=r"locked\.json: cannot read the hyperparameters file: Permission denied"):
        load_hyperparameters_file(locked)


NAMES = st.sampled_from([f.name for f in dataclasses.fields(HyperParameters)]) | st.text(max_size=20)
LEAVES = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**500), max_value=10**500)
          | st.floats() | st.text(max_size=30) | st.sampled_from(["3,224,224", "10, 20", "True", "1e400", "-0", " 7 "]))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(NAMES, JSON, max_size=6), base=st.booleans())
def test_any_json_input_gives_a_valid_instance_or_hyperparameter_error(values, base):
    known = {f.name for f in dataclasses.fields(HyperParameters)}
    calls = [(HyperParameters.from_strings, {**(BASE if base else {}), **values}),
             (lambda v: HyperParameters(**v), {**BASE, **{k: v for k, v in values.items() if k in known}})]
    for build, arg in calls:  # the constructor gets known names only: Python itself refuses others (TypeError)
        try:
            hp = build(arg)
        except HyperParameterError as e:
            assert e.errors and all(isinstance(m, str) and m for m in e.errors)
        else:
            assert HyperParameters.from_strings(hp.to_strings()) == hp
