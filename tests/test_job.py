"""The training-job contract (openic.train.job): output-folder lock, failure file, exit codes, SIGTERM, run options."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import openic.fileio as fileio
from openic.cli import main
from openic.formats.images import encode_image
from openic.formats.recordio import IRHeader, RecordWriter, pack
from openic.train.config import TrainConfig
from openic.train.job import EXIT_CLIENT, EXIT_OK, LOCK, run_job

SRC = str(Path(__file__).resolve().parents[1] / "src")
HP = ["--num_layers", "20", "--image_shape", "3,8,8", "--num_classes", "2", "--mini_batch_size", "8",
      "--learning_rate", "0.05"]


def _rec(path: Path, n: int, seed: int) -> Path:
    """``n`` 8x8 RGB PNGs of two classes (bright vs dark), a RecordIO file written by openic's own writer."""
    rng = np.random.default_rng(seed)
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for i in range(n):
            label = i % 2
            img = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8) + (150 if label else 0)
            w.write(pack(IRHeader(0, float(label), i, 0), encode_image(img.astype(np.uint8), ".png")), key=i)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobdata")
    return {"train": _rec(d / "train.rec", 32, 0), "val": _rec(d / "val.rec", 16, 1)}


def _argv(data, out: Path, *extra: str) -> list[str]:
    return ["train", "--train", str(data["train"]), "--validation", str(data["val"]), "--output-dir", str(out),
            "--num_training_samples", "32", *HP, *extra]


def _cli(argv: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "openic", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that owns ``folder`` as a running job would (the same lock, held until killed)."""
    code = ("import sys, time; from pathlib import Path; from openic.fileio import FileLock\n"
            "with FileLock(Path(sys.argv[1]), 'x'):\n    print('locked', flush=True); time.sleep(60)\n")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / LOCK)], env={**os.environ, "PYTHONPATH": SRC},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_job_on_one_output_folder_is_refused_and_writes_nothing(tmp_path, data, capsys):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        rc = main(_argv(data, out, "--epochs", "1"))
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert rc == EXIT_CLIENT
    assert str(out) in err and f"PID {holder.pid}" in err, err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # no failure file in the other run's folder
    assert main(_argv(data, out, "--epochs", "1")) == EXIT_OK  # the lock died with its holder (kill -9)


def test_two_real_trainings_into_one_folder_one_refused(tmp_path, data):
    out = tmp_path / "run"
    first = _cli(_argv(data, out, "--epochs", "30"))
    deadline = time.time() + 60
    while not (out / LOCK).exists() or not (out / LOCK).read_text().strip():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = _cli(_argv(data, out, "--epochs", "1"))
    _, err = second.communicate(timeout=120)
    first.kill()
    first.communicate()
    assert second.returncode == EXIT_CLIENT, err
    assert "another process" in err and f"PID {first.pid}" in err
    assert not (out / "failure").exists()


def test_output_dir_that_is_a_file(tmp_path, data, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(_argv(data, target, "--epochs", "1")) == EXIT_CLIENT
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


@pytest.mark.parametrize("flag,value", [("--seed", str(10**30)), ("--cache-mb", "-1"), ("--workers", "100000"),
                                        ("--threads", "0"), ("--log-every", "0"), ("--max-image-pixels", "0")])
def test_run_option_bounds_are_client_errors(tmp_path, data, capsys, flag, value):
    assert main(_argv(data, tmp_path, "--epochs", "1", flag, value)) == EXIT_CLIENT
    failure = (tmp_path / "failure").read_text()
    assert failure.startswith(f"ClientError: {flag} ") and "expected an integer from" in failure
    assert "Traceback" not in capsys.readouterr().err


def test_write_failure_mid_training_names_the_file(tmp_path, data, monkeypatch, capsys):
    real_replace = os.replace

    def read_only(src, dst):
        if Path(dst).name in ("last", "failure"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", read_only)
    job = run_job({"train": _channel("train", data["train"]), "validation": _channel("validation", data["val"])},
                  TrainConfig(output_dir=tmp_path), overrides=_hp(epochs=1))
    err = capsys.readouterr().err
    assert job.exit_code == EXIT_CLIENT
    assert f"cannot write {tmp_path / 'checkpoints' / 'last'}: [Errno 13] Permission denied" in job.failure
    assert "could not write the failure file" in err and str(tmp_path / "failure") in err
    assert ".tmp-" not in job.failure
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_sigterm_stops_with_143_and_the_run_resumes(tmp_path, data):
    out = tmp_path / "run"
    proc = _cli(_argv(data, out, "--epochs", "40"))
    deadline = time.time() + 90
    while not (out / "checkpoints" / "last").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Stopped by SIGTERM" in stdout and "run the same command again to resume" in stdout
    assert not (out / "failure").exists() and "Traceback" not in stderr
    done = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "validation:accuracy" in x]
    assert 1 <= len(done) < 40
    again = _cli(_argv(data, out, "--epochs", "40"))
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    # SIGTERM may land between an epoch's metrics line and its checkpoint: that epoch is redone, not lost
    resumed = int(re.search(r"(\d+) epochs already done", stdout).group(1))
    assert resumed in (len(done), len(done) - 1) and resumed >= 1
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines() if "validation:acc" in x]
    assert epochs == list(range(40))  # the redone epoch is logged once


def test_temp_sweep_spares_live_writers(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dest = tmp_path / "x.txt"
        mine = tmp_path / f".x.txt.tmp-{fileio._HOST}-{live.pid}"
        dead = tmp_path / f".x.txt.tmp-{fileio._HOST}-999999999"
        other_host = tmp_path / ".x.txt.tmp-elsewhere-999999999"
        for p in (mine, dead, other_host):
            p.write_text("in flight")
        fileio.atomic_write_text(dest, "done")
        assert dest.read_text() == "done"
        assert mine.exists() and other_host.exists() and not dead.exists()
    finally:
        live.kill()
        live.wait()


def _channel(name, path):
    from openic.data.sources import Channel

    return Channel(name, path)


def _hp(**extra):
    pairs = dict(zip(HP[::2], HP[1::2], strict=True))
    return {k.lstrip("-"): v for k, v in pairs.items()} | {"num_training_samples": "32"} | {
        k: str(v) for k, v in extra.items()}


def test_single_label_run_on_multi_column_labels_names_the_record(tmp_path, data, capsys):
    rec = tmp_path / "wide.rec"
    img = encode_image(np.full((8, 8, 3), 7, np.uint8), ".png")
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        for i in range(32):
            w.write(pack(IRHeader(2, (1.0, 0.0), i, 0), img), key=i)
    argv = _argv(data, tmp_path / "out", "--epochs", "1")
    argv[argv.index("--train") + 1] = str(rec)
    assert main(argv) == EXIT_CLIENT
    failure = (tmp_path / "out" / "failure").read_text()
    assert f"{rec} (record 0 at offset 0): The data has 2 labels per image but multi_label is 0" in failure


def test_unknown_run_option_in_a_mapping_is_a_client_error_naming_it(tmp_path, data, capsys):
    job = run_job({"train": _channel("train", data["train"])}, {"output_dir": tmp_path, "sed": 1},
                  overrides=_hp(epochs=1))
    assert job.exit_code == EXIT_CLIENT
    assert "'sed'" in job.failure and "seed" in job.failure
    assert (tmp_path / "failure").read_text().startswith("ClientError: unknown run option")


def test_failure_path_that_is_a_folder_is_a_client_error(tmp_path, data, capsys):
    (tmp_path / "failure").mkdir()
    job = run_job({"train": _channel("train", data["train"])}, TrainConfig(output_dir=tmp_path),
                  overrides=_hp(epochs=1))
    assert job.exit_code == EXIT_CLIENT and str(tmp_path / "failure") in job.failure


@pytest.mark.parametrize(("resume", "has_last", "says"), [
    (True, True, "run the same command again to resume"),
    (False, True, "resuming was off"),
    (True, False, "no epoch had completed"),
])
def test_stop_message_promises_a_resume_only_when_one_will_happen(tmp_path, resume, has_last, says):
    from openic.train.job import _resume_hint

    if has_last:
        (tmp_path / "checkpoints" / "last").mkdir(parents=True)
    assert says in _resume_hint(TrainConfig(output_dir=tmp_path, resume=resume), tmp_path)


def test_demo_with_a_bad_seed_fails_before_building_data(tmp_path):
    from openic.errors import ClientError
    from openic.sdk.demo import run_workshop

    with pytest.raises(ClientError, match="seed"):
        run_workshop(tmp_path, seed=-1)
    with pytest.raises(ClientError, match="epochs"):
        run_workshop(tmp_path, epochs="0")
    assert not (tmp_path / "data").exists()
