import csv
import json
import math
import sys
import time

import pytest
from PIL import Image

import openic.cli as cli
from openic.errors import ClientError, DataError
from openic.tracking import FileTracker, MultiTracker, NullTracker, Tracker, per_epoch, read_metrics
from openic.tracking.charts import find_runs, plot_run, summarize_run
from openic.tracking.mlflow import MlflowTracker

VAL = [0.30, 0.55, 0.70, 0.70, 0.65]


def log_run(run_dir, epochs=5, with_validation=True, top_k=True, batches=2):
    """What the training loop writes: windows of batches, then an epoch summary line."""
    tracker = FileTracker(run_dir)
    tracker.log_params({"num_layers": 18, "epochs": epochs, "image_shape": "3,32,32"})
    step = 0
    for epoch in range(epochs):
        for _ in range(batches):
            step += 20
            tracker.log_metrics({"train:accuracy": 0.1 * epoch, "train:loss": 1.0, "learning_rate": 0.1,
                                 "samples_per_sec": 500.0}, step=step, epoch=epoch)
        record = {"train:accuracy": 0.2 + 0.15 * epoch, "train:loss": 2.0 * math.exp(-epoch / 2),
                  "learning_rate": 0.1 * 0.1 ** (epoch // 3), "samples_per_sec": 1000.0 + epoch, "epoch_time": 2.5}
        if top_k:
            record["train:top_k_accuracy_2"] = min(1.0, 0.5 + 0.1 * epoch)
        if with_validation:
            record |= {"validation:accuracy": VAL[epoch % len(VAL)], "validation:loss": 2.2 * math.exp(-epoch / 3)}
            if top_k:
                record["validation:top_k_accuracy_2"] = min(1.0, 0.45 + 0.1 * epoch)
        tracker.log_metrics(record, step=step, epoch=epoch)
    return tracker


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_are_flushed_as_they_are_written(tmp_path):
    before = time.time()
    tracker = FileTracker(tmp_path)
    tracker.log_metrics({"train:accuracy": 0.5, "learning_rate": 0.1}, step=20, epoch=0)
    tracker.log_metrics({"validation:accuracy": 0.25, "train:loss": float("nan")}, step=40, epoch=0)
    got = lines(tmp_path / "metrics.jsonl")  # read while still open: nothing is buffered
    assert got[0] == {"epoch": 0, "step": 20, "time": got[0]["time"], "train:accuracy": 0.5, "learning_rate": 0.1}
    assert before - 1 <= got[0]["time"] <= time.time() + 1
    assert got[1]["train:loss"] is None  # non-finite values keep the file strict JSON
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="reserved"):
        tracker.log_metrics({"epoch": 1.0}, step=1, epoch=0)
    with pytest.raises(TypeError, match="'x' must be a number"):
        tracker.log_metrics({"x": "high"}, step=1, epoch=0)
    tracker.close()
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.log_metrics({"a": 1.0}, step=1, epoch=0)


def test_csv_view_and_params(tmp_path):
    log_run(tmp_path, epochs=3).close()
    records = lines(tmp_path / "metrics.jsonl")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 9
    assert list(rows[0])[:4] == ["epoch", "step", "time", "train:accuracy"]
    assert "validation:accuracy" in rows[0] and rows[0]["validation:accuracy"] == ""  # batch line: blank
    assert float(rows[2]["validation:accuracy"]) == VAL[0] and rows[2]["epoch"] == "0"
    tracker = FileTracker(tmp_path, resume_from_epoch=2)
    tracker.log_params({"a": 1})
    tracker.log_params({"b": (2, 3)})
    assert json.loads((tmp_path / "params.json").read_text()) == {"a": 1, "b": [2, 3]}


def test_resume_drops_epochs_after_the_checkpoint(tmp_path):
    log_run(tmp_path, epochs=4).close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "step": 1')  # torn line from a killed run
    tracker = FileTracker(tmp_path, resume_from_epoch=1)
    assert {r["epoch"] for r in lines(tmp_path / "metrics.jsonl")} == {0, 1}
    tracker.log_metrics({"validation:accuracy": 0.9}, step=999, epoch=2)
    tracker.close()
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 0, 0, 1, 1, 1, 2]
    assert [r["epoch"] for r in per_epoch(records)] == [0, 1, 2]
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 7
    FileTracker(tmp_path).close()  # a fresh run in the same folder starts a new log
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_read_metrics_reports_bad_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "step": 1}\n{oops\n{"epoch": 1, "step": 2}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(DataError, match="integer 'epoch'"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "step": 1}\n{"epoch": 0, "st')
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 1
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="run directory"):
        read_metrics(tmp_path / "sub")


def test_log_artifact_copies_outside_files_only(tmp_path):
    run = tmp_path / "run"
    tracker = FileTracker(run)
    (tmp_path / "notes.txt").write_text("hi")
    tracker.log_artifact(tmp_path / "notes.txt")
    assert (run / "artifacts" / "notes.txt").read_text() == "hi"
    (run / "inside.txt").write_text("x")
    tracker.log_artifact(run / "inside.txt")
    assert not (run / "artifacts" / "inside.txt").exists()
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(tmp_path / "missing")
    tracker.close()


class Recorder:
    def __init__(self, fail_close=False):
        self.calls, self.fail_close = [], fail_close

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, *, step, epoch):
        self.calls.append(("metrics", dict(metrics), step, epoch))

    def log_artifact(self, path):
        self.calls.append(("artifact", path))

    def close(self):
        self.calls.append(("close",))
        if self.fail_close:
            raise OSError("disk full")


def test_null_and_multi_trackers(tmp_path):
    for t in (FileTracker(tmp_path), NullTracker(), MultiTracker(), Recorder()):
        assert isinstance(t, Tracker)
    a, b = Recorder(fail_close=True), Recorder()
    multi = MultiTracker(a, NullTracker(), b)
    multi.log_params({"x": 1})
    multi.log_metrics({"m": 0.5}, step=3, epoch=1)
    multi.log_artifact(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        multi.close()
    assert a.calls == b.calls == [("params", {"x": 1}), ("metrics", {"m": 0.5}, 3, 1), ("artifact", tmp_path),
                                  ("close",)]


def test_mlflow_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed, even where it is
    with pytest.raises(ClientError, match=r"pip install openic\[mlflow\]"):
        MlflowTracker(experiment="x")


def test_summarize_run(tmp_path):
    log_run(tmp_path / "r", epochs=5).close()
    s = summarize_run(tmp_path / "r")
    assert s["name"] == "r" and s["epochs"] == 5 and s["last_epoch"] == 4
    assert (s["best_validation_accuracy"], s["best_epoch"]) == (0.70, 2)  # first epoch reaching the best, as SageMaker
    assert s["last_validation_accuracy"] == 0.65
    assert s["last_train_accuracy"] == pytest.approx(0.8)  # the epoch summary, not the last batch window
    assert s["train_time_s"] == 12.5 and s["wall_time_s"] >= 0 and s["has_model"] is False


def test_plot_run_writes_a_readable_png(tmp_path):
    log_run(tmp_path / "run", epochs=5).close()
    png = plot_run(tmp_path / "run")
    assert png == tmp_path / "run" / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    with Image.open(png) as im:
        assert im.size == (1200, 800)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colors) > 200  # lines, text and markers, not a blank canvas
    log_run(tmp_path / "noval", epochs=2, with_validation=False, top_k=False).close()
    out = plot_run(tmp_path / "noval" / "metrics.jsonl", tmp_path / "charts" / "noval.png")
    assert out.is_file() and out.stat().st_size > 10_000
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(ClientError, match="no metrics"):
        plot_run(tmp_path / "empty")


def test_plot_without_matplotlib_gives_install_hint(tmp_path, monkeypatch):
    log_run(tmp_path, epochs=1).close()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ClientError, match=r"pip install openic\[plots\]"):
        plot_run(tmp_path)


@pytest.fixture
def openic_main(monkeypatch):
    """The real CLI entry point, limited to this module's subcommands so other areas cannot break these tests."""
    assert "openic.cli.runs" in cli._COMMAND_MODULES
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("openic.cli.runs",))
    return cli.main


def test_runs_browser(tmp_path, openic_main, capsys):
    log_run(tmp_path / "exp" / "resnet18", epochs=5).close()
    log_run(tmp_path / "exp" / "resnet50", epochs=2, with_validation=False).close()
    (tmp_path / "exp" / "resnet18" / "model.tar.gz").write_bytes(b"")
    (tmp_path / "exp" / ".hidden").mkdir()
    (tmp_path / "exp" / ".hidden" / "metrics.jsonl").write_text("")
    assert find_runs([tmp_path]) == [tmp_path / "exp" / "resnet18", tmp_path / "exp" / "resnet50"]
    assert openic_main(["runs", str(tmp_path / "exp")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["RUN", "EPOCHS"]
    assert "resnet18" in table[1] and "0.7000 (epoch 2)" in table[1] and table[1].rstrip().endswith("yes")
    assert "resnet50" in table[2] and " - " in table[2]
    assert openic_main(["runs", "--json", str(tmp_path / "exp")]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in summaries] == ["resnet18", "resnet50"]
    assert summaries[0]["best_validation_accuracy"] == 0.70
    assert openic_main(["runs", str(tmp_path / "missing")]) == 2
    assert "openic runs: error: not a directory" in capsys.readouterr().err


def test_plot_command(tmp_path, openic_main, capsys):
    log_run(tmp_path / "run", epochs=3).close()
    assert openic_main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "chart.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000
    assert openic_main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
