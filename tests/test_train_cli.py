"""Training through ``openic.cli.main`` (``openic train``/``demo``): the CLI contract, optimizers, schedule, early
stopping, checkpoints/resume, multi-label, incremental training, mixed precision, .lst/manifest channels — on the
session data of ``conftest.py`` (digits made by ``make_digits``, byte-identical with MXNet's fixtures)."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from openic.cli import main
from openic.formats.recordio import RecordReader, RecordWriter

ROOT = Path(__file__).resolve().parents[1]

BASE = ["--num_layers", "20", "--image_shape", "3,28,28", "--num_classes", "10", "--mini_batch_size", "32",
        "--learning_rate", "0.1", "--epochs", "1"]


def _train(small, out: Path, *extra: str, train: str = "train", val: str = "val", samples: str = "96") -> int:
    return main(["train", "--train", str(small[train]), "--validation", str(small[val]), "--output-dir", str(out),
                 "--num_training_samples", samples, *BASE, *extra])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _epochs(out: Path) -> list[dict]:
    return [r for r in _metrics(out) if "validation:accuracy" in r]


@pytest.mark.slow
def test_learns_digits_end_to_end(tmp_path, capsys, digits_set):
    """ResNet-20 on the full digits set: validation accuracy far above chance (0.1) in three epochs."""
    rc = main(["train", "--train", str(digits_set.train_rec),
               "--validation", str(digits_set.val_rec), "--output-dir", str(tmp_path),
               "--num_layers", "20", "--image_shape", "3,28,28", "--num_classes", "10",
               "--num_training_samples", "1437", "--mini_batch_size", "32", "--learning_rate", "0.05",
               "--epochs", "3", "--augmentation_type", "crop", "--top_k", "2"])
    assert rc == 0
    logs = capsys.readouterr().out
    assert "Epoch[2] Validation-accuracy=" in logs and "Epoch[0] Train-top_k_accuracy_2=" in logs
    assert "Epoch[0] Batch [20]\tSpeed: " in logs
    best = max(r["validation:accuracy"] for r in _epochs(tmp_path))
    assert best > 0.6, best
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"model.safetensors", "model-shapes.json", "hyperparameters.json"} <= names


def test_log_lines_and_metrics_file(tmp_path, small, capsys):
    assert _train(small, tmp_path, "--epochs", "2", "--top_k", "3") == 0
    out = capsys.readouterr().out
    for line in ("---- Parameters ----", "Epoch[0] Train-accuracy=", "Epoch[0] Train-top_k_accuracy_3=",
                 "Epoch[0] Time cost=", "Epoch[1] Validation-accuracy=",
                 "Storing the best model with validation accuracy: "):
        assert line in out, line
    assert out.splitlines()[0].startswith("[") and " INFO " in out.splitlines()[0]
    rows = _epochs(tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train:accuracy", "validation:accuracy", "train:loss", "learning_rate", "samples_per_sec"):
        assert key in rows[0]
    assert (tmp_path / "model.tar.gz").is_file() and not (tmp_path / "failure").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam", "rmsprop"])
def test_each_optimizer_reduces_training_loss(tmp_path, small, optimizer):
    lr = "0.05" if optimizer in ("sgd", "nag") else "0.001"
    assert _train(small, tmp_path, "--optimizer", optimizer, "--learning_rate", lr, "--epochs", "3") == 0
    losses = [r["train:loss"] for r in _epochs(tmp_path)]
    assert losses[-1] < losses[0], losses


def test_learning_rate_logged_per_epoch_follows_schedule(tmp_path, small):
    assert _train(small, tmp_path, "--epochs", "3", "--lr_scheduler_step", "1,2", "--lr_scheduler_factor",
                  "0.1") == 0
    lrs = [r["learning_rate"] for r in _epochs(tmp_path)]
    assert lrs == pytest.approx([0.1, 0.01, 0.001])


def test_early_stopping_stops_when_accuracy_stalls(tmp_path, small, capsys):
    rc = _train(small, tmp_path, "--epochs", "6", "--learning_rate", "0", "--early_stopping", "True",
                "--early_stopping_min_epochs", "1", "--early_stopping_patience", "2")
    assert rc == 0
    assert len(_epochs(tmp_path)) < 6
    assert "Early stopping" in capsys.readouterr().out


def test_checkpoint_frequency_keeps_every_nth_epoch(tmp_path, small):
    assert _train(small, tmp_path, "--epochs", "2", "--checkpoint_frequency", "1") == 0
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        names = tar.getnames()
    assert "image-classification-0001.safetensors" in names and "image-classification-0002.safetensors" in names
    assert not any(n.endswith((".pt", ".pkl", ".pth")) for n in names)


def test_bad_hyperparameter_writes_client_error_failure(tmp_path, small, capsys):
    rc = _train(small, tmp_path, "--num_layers", "19")
    assert rc == 2
    failure = (tmp_path / "failure").read_text()
    assert failure.startswith("ClientError:") and "num_layers" in failure and "19" in failure
    assert "Traceback" not in capsys.readouterr().err


def test_label_outside_num_classes_is_client_error(tmp_path, small):
    rc = main(["train", "--train", str(small["train"]), "--validation", str(small["val"]), "--output-dir",
               str(tmp_path), "--num_training_samples", "96", *BASE, "--num_classes", "5"])
    assert rc == 2
    assert "num_classes" in (tmp_path / "failure").read_text()


def test_batch_larger_than_data_is_client_error(tmp_path, small):
    assert _train(small, tmp_path, "--mini_batch_size", "500") == 2
    assert "mini_batch_size" in (tmp_path / "failure").read_text()


def test_missing_channel_file_is_client_error(tmp_path, small):
    rc = main(["train", "--train", str(tmp_path / "nope.rec"), "--validation", str(small["val"]), "--output-dir",
               str(tmp_path / "out"), "--num_training_samples", "96", *BASE])
    assert rc == 2
    assert "nope.rec" in (tmp_path / "out" / "failure").read_text()


def test_multi_label_training(tmp_path, small, capsys):
    rc = _train(small, tmp_path, "--multi_label", "1", "--use_weighted_loss", "1", "--epochs", "2",
                train="ml", val="ml", samples="64")
    assert rc == 0
    rows = _epochs(tmp_path)
    assert all(0.0 <= r["validation:accuracy"] <= 1.0 for r in rows)


def test_multi_label_width_mismatch(tmp_path, small):
    rc = _train(small, tmp_path, "--multi_label", "1", "--num_classes", "7", train="ml", val="ml", samples="64")
    assert rc == 2
    assert "Mismatch between number of labels" in (tmp_path / "failure").read_text()


def test_incremental_training_and_mismatch(tmp_path, small, capsys):
    first = tmp_path / "first"
    assert _train(small, first) == 0
    second = tmp_path / "second"
    assert _train(small, second, "--model", str(first / "model.tar.gz")) == 0
    assert "incremental" in capsys.readouterr().out.lower()
    third = tmp_path / "third"
    assert _train(small, third, "--model", str(first / "model.tar.gz"), "--num_layers", "32") == 2
    text = (third / "failure").read_text()
    assert text.startswith("ClientError:") and "num_layers" in text


def test_float16_precision_runs_bf16_on_cpu(tmp_path, small, capsys):
    from openic.models.precision import native_bf16

    assert _train(small, tmp_path, "--precision_dtype", "float16") == 0
    assert _epochs(tmp_path)[0]["train:loss"] > 0
    warned = "this one has no native bfloat16" in capsys.readouterr().out
    assert warned == (not native_bf16())  # said on a CPU that emulates bfloat16, and only there


def test_pretrained_without_weights_says_how_to_supply_them(tmp_path, small, monkeypatch):
    monkeypatch.delenv("OPENIC_PRETRAINED_DIR", raising=False)
    rc = main(["train", "--train", str(small["train"]), "--validation", str(small["val"]), "--output-dir",
               str(tmp_path), "--num_training_samples", "96", *BASE, "--num_layers", "18",
               "--use_pretrained_model", "1"])
    assert rc == 2
    assert "--pretrained" in (tmp_path / "failure").read_text()


def test_pretrained_weights_from_earlier_model(tmp_path, small):
    base = tmp_path / "base"
    assert _train(small, base, "--num_layers", "18", "--num_classes", "10") == 0
    tuned = tmp_path / "tuned"
    assert _train(small, tuned, "--num_layers", "18", "--use_pretrained_model", "1", "--pretrained",
                  str(base / "model.tar.gz")) == 0


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_loses_no_epoch(tmp_path, small):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "openic", "train", "--train", str(small["train"]), "--validation",
           str(small["val"]), "--output-dir", str(out), "--num_training_samples", "96", *BASE, "--epochs", "3",
           "--mini_batch_size", "4"]  # 24 batches per epoch, so "Batch [20]" is logged mid-epoch
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stdout:
        if "Epoch[1] Batch [" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "last").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming from" in done.stdout and "1 epochs already done" in done.stdout
    assert [r["epoch"] for r in _epochs(out)] == [0, 1, 2]


def test_resume_refuses_other_hyperparameters(tmp_path, small):
    assert _train(small, tmp_path, "--epochs", "1") == 0
    assert _train(small, tmp_path, "--epochs", "1", "--learning_rate", "0.2") == 2
    assert "other hyperparameters" in (tmp_path / "failure").read_text()


def test_saved_model_predicts_like_trained_model(tmp_path, small):
    from openic.artifacts import load_model

    assert _train(small, tmp_path) == 0
    loaded = load_model(tmp_path / "model.tar.gz")
    x = torch.randint(0, 256, (2, 3, 28, 28)).float()
    assert loaded.model(x).shape == (2, 10)


def _image_folder(root: Path, n: int, sizes=((36, 40), (40, 36))) -> list[tuple[str, int]]:
    """Tiny PNGs of two shapes in class folders; returns (relative path, label) pairs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        label = i % 2
        h, w = sizes[i % len(sizes)]
        arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8) + (180 if label else 0)  # classes differ in brightness
        rel = f"c{label}/{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(root / rel)
        items.append((rel, label))
    return items


LST_HP = ["--num_layers", "20", "--image_shape", "3,28,28", "--num_classes", "2", "--mini_batch_size", "8",
          "--learning_rate", "0.05", "--resize", "32", "--augmentation_type", "crop_color_transform"]


def test_lst_channels_with_mixed_sizes_stream_through_workers(tmp_path, capsys):
    from openic.formats.lst import LstEntry, write_lst

    root = tmp_path / "images"
    items = _image_folder(root, 24)
    write_lst(tmp_path / "train.lst", [LstEntry(i, (float(lab),), rel) for i, (rel, lab) in enumerate(items)])
    write_lst(tmp_path / "val.lst", [LstEntry(i, (float(lab),), rel) for i, (rel, lab) in enumerate(items[:8])])
    out = tmp_path / "out"
    rc = main(["train", "--train", str(root), "--validation", str(root), "--train-lst", str(tmp_path / "train.lst"),
               "--validation-lst", str(tmp_path / "val.lst"), "--output-dir", str(out), "--workers", "1",
               "--num_training_samples", "24", "--epochs", "2", *LST_HP])
    assert rc == 0, (out / "failure").read_text() if (out / "failure").exists() else ""
    logs = capsys.readouterr().out
    assert "streamed from disk" in logs
    assert len(_epochs(out)) == 2


def test_lst_with_missing_image_names_file_and_line(tmp_path):
    from openic.formats.lst import LstEntry, write_lst

    root = tmp_path / "images"
    items = _image_folder(root, 8, sizes=((32, 32),))
    entries = [LstEntry(i, (float(lab),), rel) for i, (rel, lab) in enumerate(items)]
    write_lst(root / "train.lst", [*entries, LstEntry(99, (0.0,), "c0/missing.png")])
    out = tmp_path / "out"
    rc = main(["train", "--train", str(root / "train.lst"), "--validation", str(root / "train.lst"),
               "--output-dir", str(out), "--num_training_samples", "9", *LST_HP])
    assert rc == 2
    text = (out / "failure").read_text()
    assert "missing.png" in text and "train.lst:9" in text


def test_augmented_manifest_channel(tmp_path):
    root = tmp_path / "images"
    items = _image_folder(root, 16, sizes=((32, 32),))
    manifest = tmp_path / "train.manifest"
    manifest.write_text("".join(json.dumps({"source-ref": f"images/{rel}", "class": str(lab),
                                            "class-metadata": {"class-name": f"c{lab}"}}) + "\n"
                                for rel, lab in items))
    out = tmp_path / "out"
    rc = main(["train", "--train", str(manifest), "--validation", str(manifest), "--output-dir", str(out),
               "--num_training_samples", "16", "--epochs", "1", *LST_HP])
    assert rc == 0, (out / "failure").read_text() if (out / "failure").exists() else ""


def test_class_names_from_im2rec_sidecar_go_into_the_model(tmp_path, small):
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(small["train"], data / "digits_train.rec")
    shutil.copy(small["val"], data / "digits_val.rec")
    (data / "digits_classes.txt").write_text("".join(f"digit{i}\n" for i in range(10)))
    out = tmp_path / "out"
    assert main(["train", "--train", str(data / "digits_train.rec"), "--validation", str(data / "digits_val.rec"),
                 "--output-dir", str(out), "--num_training_samples", "96", *BASE]) == 0
    from openic.artifacts import load_model

    assert load_model(out / "model.tar.gz").class_names == [f"digit{i}" for i in range(10)]


def test_misspelt_hyperparameter_flag_suggests_the_name(tmp_path, small):
    """No argparse abbreviation: `--mini_batch_siz` is rejected with SageMaker's name suggested."""
    assert _train(small, tmp_path, "--mini_batch_siz", "8") == 2
    text = (tmp_path / "failure").read_text()
    assert text.startswith("ClientError:") and "mini_batch_siz" in text and "Did you mean 'mini_batch_size'" in text


def test_hyperparameters_file_with_sagemaker_strings(tmp_path, small):
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({"num_layers": "20", "image_shape": "3,28,28", "num_classes": "10",
                              "num_training_samples": "96", "mini_batch_size": "32", "epochs": "1",
                              "learning_rate": "0.1", "early_stopping": "False", "model_prefix": ""}))
    out = tmp_path / "out"
    rc = main(["train", "--train", str(small["train"]), "--validation", str(small["val"]), "--output-dir", str(out),
               "--hyperparameters", str(hp), "--epochs", "2"])
    assert rc == 0
    assert len(_epochs(out)) == 2  # the flag overrides the file


def test_manifest_absolute_or_escaping_paths_are_refused(tmp_path):
    root = tmp_path / "images"
    items = _image_folder(root, 4, sizes=((32, 32),))
    for ref in (str(root / items[0][0]), f"file://{root / items[0][0]}", "../elsewhere.png"):
        manifest = tmp_path / "m" / "train.manifest"
        manifest.parent.mkdir(exist_ok=True)
        manifest.write_text("\n" + json.dumps({"source-ref": ref, "class": "0"}) + "\n")
        out = tmp_path / "out"
        rc = main(["train", "--train", str(manifest), "--validation", str(manifest), "--output-dir", str(out),
                   "--num_training_samples", "1", *LST_HP, "--mini_batch_size", "1"])
        assert rc == 2
        assert "train.manifest:2" in (out / "failure").read_text(), ref


def test_cli_os_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["datasets", "digits", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "openic datasets: error:" in err and "Traceback" not in err


def test_streamed_bad_record_is_one_clean_client_error(tmp_path, small):
    bad = tmp_path / "bad.rec"
    from openic.formats.recordio import IRHeader, pack

    with RecordReader(small["train"]) as reader, RecordWriter(bad, bad.with_suffix(".idx")) as writer:
        for i, (record, _) in enumerate(reader.scan()):
            writer.write(pack(IRHeader(0, 1.0, i, 0), b"not an image") if i == 5 else record, key=i)
    out = tmp_path / "out"
    rc = main(["train", "--train", str(bad), "--validation", str(small["val"]), "--output-dir", str(out),
               "--num_training_samples", "96", *BASE, "--cache-mb", "0", "--workers", "1"])
    assert rc == 2
    text = (out / "failure").read_text()
    assert text.startswith("ClientError:") and "bad.rec (record 5" in text and "Traceback" not in text


def test_rerun_after_early_stop_has_nothing_to_do(tmp_path, small, capsys):
    args = ("--epochs", "6", "--learning_rate", "0", "--early_stopping", "True", "--early_stopping_min_epochs", "1",
            "--early_stopping_patience", "1")
    assert _train(small, tmp_path, *args) == 0
    first = len(_epochs(tmp_path))
    capsys.readouterr()
    assert _train(small, tmp_path, *args) == 0
    assert "Nothing left to train" in capsys.readouterr().out
    assert len(_epochs(tmp_path)) == first


def test_model_problems_are_reported_before_decoding_data(tmp_path, small, capsys, monkeypatch):
    monkeypatch.delenv("OPENIC_PRETRAINED_DIR", raising=False)
    assert _train(small, tmp_path, "--num_layers", "18", "--use_pretrained_model", "1") == 2
    assert "decoded once into memory" not in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--device", "tpu"], ["--workers", "-1"], ["--threads", "0"],
                                  ["--precise-bn-batches", "-1"]])
def test_bad_run_options_are_client_errors(tmp_path, small, flag):
    assert _train(small, tmp_path, *flag) == 2
    assert (tmp_path / "failure").read_text().startswith("ClientError:")


def test_streamed_image_smaller_than_crop_names_the_file(tmp_path):
    from PIL import Image

    from openic.formats.lst import LstEntry, write_lst

    root = tmp_path / "images"
    items = _image_folder(root, 8, sizes=((36, 40), (40, 36)))
    Image.new("RGB", (40, 20)).save(root / "small.png")
    write_lst(root / "train.lst", [*(LstEntry(i, (float(lab),), rel) for i, (rel, lab) in enumerate(items)),
                                   LstEntry(8, (0.0,), "small.png")])
    out = tmp_path / "out"
    hp = [a for a in LST_HP]
    hp[hp.index("--resize"):hp.index("--resize") + 2] = []
    rc = main(["train", "--train", str(root / "train.lst"), "--validation", str(root / "train.lst"),
               "--output-dir", str(out), "--num_training_samples", "9", "--workers", "1", "--epochs", "1", *hp])
    assert rc == 2
    text = (out / "failure").read_text()
    assert "small.png" in text and "Traceback" not in text


def test_manifest_with_two_label_keys_needs_label_attribute(tmp_path):
    root = tmp_path / "images"
    items = _image_folder(root, 8, sizes=((32, 32),))
    manifest = tmp_path / "train.manifest"
    manifest.write_text("".join(json.dumps({"source-ref": f"images/{rel}", "class": str(lab), "other": "x"}) + "\n"
                                for rel, lab in items))
    base = ["train", "--train", str(manifest), "--validation", str(manifest), "--num_training_samples", "8",
            "--epochs", "1", *LST_HP]
    assert main([*base, "--output-dir", str(tmp_path / "a")]) == 2
    assert "--label-attribute" in (tmp_path / "a" / "failure").read_text()
    assert main([*base, "--output-dir", str(tmp_path / "b"), "--label-attribute", "class"]) == 0


def test_class_id_labels_need_multi_label(tmp_path, small):
    assert _train(small, tmp_path, "--label-format", "class-id") == 2
    assert "multi_label=1" in (tmp_path / "failure").read_text()


def test_resume_with_other_architecture_names_the_hyperparameters(tmp_path, small):
    assert _train(small, tmp_path) == 0
    assert _train(small, tmp_path, "--num_layers", "32") == 2
    text = (tmp_path / "failure").read_text()
    assert "other hyperparameters" in text and "num_layers" in text


@pytest.mark.slow
def test_demo_command_runs_the_workshop_end_to_end(tmp_path, capsys, monkeypatch):
    """What `make demo` runs, for one epoch: data, a training job, charts, an endpoint, predictions, locations."""
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["demo", "--dir", str(tmp_path), "--epochs", "1", "--show", "5"]) == 0
    out = capsys.readouterr().out
    assert "Epoch[0] Validation-accuracy=" in out
    predicted = [line for line in out.splitlines() if line.strip().startswith("image ")]
    assert len(predicted) == 5 and all("predicted " in p and ", true " in p for p in predicted)
    assert "deleted;" in out and "open the MLflow UI with: openic ui" in out
    (job,) = (tmp_path / "output").iterdir()
    assert job.name.startswith("image-classification-")
    model = job / "output" / "model.tar.gz"
    assert f"model: {model}" in out and model.is_file() and (job / "output" / "metrics.png").is_file()
    assert f"charts: {job / 'output' / 'metrics.png'}" in out and "MLflow run: " in out
    assert max(r["validation:accuracy"] for r in _epochs(job / "output")) > 0.5