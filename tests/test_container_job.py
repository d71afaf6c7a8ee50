"""``openic train --sagemaker`` against temporary ml-roots: SageMaker's layout in, model/failure/checkpoints out,
a spot restart resumes, Pipe FIFOs are read, and two hosts from resourceconfig.json train as one job."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import cut_rec

from openic.train.launch import free_port

HP = {"num_layers": "20", "image_shape": "1,28,28", "num_classes": "10", "num_training_samples": "64",
      "mini_batch_size": "16", "epochs": "2"}


@pytest.fixture(scope="module")
def recs(tmp_path_factory, digits_set) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("container_recs")
    return {"train": cut_rec(digits_set.train_rec, d / "train.rec", 0, 64),
            "validation": cut_rec(digits_set.val_rec, d / "val.rec", 0, 32)}


def _ml_root(root: Path, recs: dict[str, Path], hp: dict[str, str] = HP, pipe: bool = False,
             hosts: tuple[str, ...] = ("algo-1",), current: str = "algo-1") -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hp))
    mode = "Pipe" if pipe else "File"
    (config / "inputdataconfig.json").write_text(json.dumps({
        ch: {"ContentType": "application/x-recordio", "TrainingInputMode": mode,
             "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"} for ch in recs}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": current, "hosts": list(hosts)}))
    for ch, rec in recs.items():
        if not pipe:
            (root / "input" / "data" / ch).mkdir(parents=True)
            shutil.copy(rec, root / "input" / "data" / ch / rec.name)
    return root


def _train(root: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", "openic", "train", "--sagemaker", "--ml-root", str(root)],
                          capture_output=True, text=True, timeout=300, env=clean | env)


def _train_hosts(roots: list[Path]) -> list[str]:
    """Every ml-root's ``train --sagemaker`` at once, on one master port; each must succeed. Their logs."""
    port = str(free_port())
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen([sys.executable, "-m", "openic", "train", "--sagemaker", "--ml-root", str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=clean | {"OPENIC_MASTER_PORT": port}) for r in roots]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(log[-2000:] for log in logs)
    return logs


def test_file_mode_writes_model_and_checkpoints_and_a_spot_restart_resumes(recs, tmp_path):
    root = _ml_root(tmp_path / "ml", recs)
    proc = _train(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    model = root / "model"
    assert (model / "model-shapes.json").is_file() and (model / "hyperparameters.json").is_file()
    assert not (model / "model.tar.gz").exists()  # SageMaker tars the folder itself
    assert (root / "checkpoints" / "last").exists()
    assert not (root / "output" / "failure").exists()
    again = _train(root)  # a spot restart: the checkpoints are there, nothing is left to train
    assert again.returncode == 0 and "Nothing left to train" in again.stdout


def test_bad_hyperparameter_is_a_client_error_in_output_failure(recs, tmp_path):
    root = _ml_root(tmp_path / "ml", recs, hp=HP | {"mini_batch_siz": "16"})
    proc = _train(root)
    assert proc.returncode == 2
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("ClientError:") and "mini_batch_siz" in failure


def _sagemaker_pipes(data: Path, passes: dict[str, list[Path]]) -> list[threading.Thread]:
    """SageMaker's side of Pipe mode: per channel, FIFO ``<channel>_<k>`` appears once pass k-1 was read, and
    streams ``passes[channel][k]``."""
    def stream(ch: str) -> None:
        for k, src in enumerate(passes[ch]):
            fifo = data / f"{ch}_{k}"
            os.mkfifo(fifo)
            with open(fifo, "wb") as w:  # blocks until openic opens the FIFO
                w.write(src.read_bytes())

    data.mkdir(parents=True, exist_ok=True)
    writers = [threading.Thread(target=stream, args=(ch,), daemon=True) for ch in passes]
    for w in writers:
        w.start()
    return writers


def test_pipe_mode_reads_a_fifo_for_every_pass(recs, tmp_path):
    """Epoch k reads ``<channel>_k``, a FIFO that appears only once pass k-1 was read, as SageMaker's do; pass 1
    of train streams other records (as with ShuffleConfig), so epoch 1 trains on a rebuilt set."""
    root = _ml_root(tmp_path / "ml", recs, pipe=True)
    data = root / "input" / "data"
    fewer = cut_rec(recs["train"], tmp_path / "fewer.rec", 0, 48)
    writers = _sagemaker_pipes(data, {"train": [recs["train"], fewer], "validation": [recs["validation"]] * 2})
    proc = _train(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for w in writers:
        w.join(10)
        assert not w.is_alive()  # every pass was read to its end
    said = proc.stdout + proc.stderr
    assert "pipe input mode" in said and (root / "model" / "model-shapes.json").is_file()
    assert "Pipe pass 1 of the train channel: a new stream" in said
    assert "Pipe pass 1 of the validation channel: the same stream as before" in said
    assert "Rebuilding the data from the new Pipe streams" in said
    assert "Rebuilt training data: 48 images, 3 batches per epoch" in said  # 64 images in pass 0


@pytest.mark.slow
def test_two_hosts_from_resourceconfig(recs, tmp_path):
    """Each "host" has its own ml-root; hosts resolve on this machine (127.0.0.1 is the master)."""
    hosts = ("127.0.0.1", "localhost")
    roots = [_ml_root(tmp_path / f"host{i}", recs, hosts=hosts, current=h) for i, h in enumerate(hosts)]
    logs = _train_hosts(roots)
    assert "global batch 32 = mini_batch_size 16 x 2 hosts" in logs[0]
    assert (roots[0] / "model" / "model-shapes.json").is_file()
    assert not (roots[1] / "model").exists() or not any((roots[1] / "model").iterdir())  # one copy of the model


@pytest.mark.slow
def test_sharded_by_s3_key_gives_each_host_its_own_images(digits_set, tmp_path):
    """Host 0 holds 40 training and 20 validation images, host 1 another 24 and 12: both run the same number of
    batches (the shorter shard cycles), and validation is scored over the 32 images of both hosts."""
    hosts = ("127.0.0.1", "localhost")
    parts = [((0, 40), (0, 20)), ((40, 24), (20, 12))]  # (first, count)
    roots = []
    for i, (h, (train, val)) in enumerate(zip(hosts, parts, strict=True)):
        d = tmp_path / f"data{i}"
        d.mkdir()
        recs = {"train": cut_rec(digits_set.train_rec, d / "train.rec", *train),
                "validation": cut_rec(digits_set.val_rec, d / "val.rec", *val)}
        root = _ml_root(tmp_path / f"host{i}", recs, hosts=hosts, current=h)
        config = root / "input" / "config" / "inputdataconfig.json"
        channels = json.loads(config.read_text())
        for ch in channels.values():
            ch["S3DistributionType"] = "ShardedByS3Key"
        config.write_text(json.dumps(channels))
        roots.append(root)
    logs = _train_hosts(roots)
    assert "train channel is ShardedByS3Key: 40 images on this host, 64 over 2 hosts; 40 per rank" in logs[0]
    assert "train channel is ShardedByS3Key: 24 images on this host, 64 over 2 hosts; 40 per rank" in logs[1]
    assert "validation channel is ShardedByS3Key: 12 images on this host, 32 over 2 hosts" in logs[1]
    for log in logs:
        assert "3 training batches of 16 images per epoch" in log  # ceil(40 / 16) on both hosts
    accuracy = [re.findall(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)", log) for log in logs]
    assert accuracy[0] == accuracy[1] and len(accuracy[0]) == 2
    assert all(abs(float(a) * 32 - round(float(a) * 32)) < 1e-4 for a in accuracy[0])  # k of the 32 images
    assert (roots[0] / "model" / "model-shapes.json").is_file()


@pytest.mark.slow
def test_two_hosts_in_pipe_mode_rebuild_together_when_one_host_stream_changes(recs, tmp_path):
    """ShardedByS3Key: host 0's second pass streams other records, host 1's the same ones; both hosts rebuild their
    data before epoch 1 (a collective decision), so their batch counts stay equal and training finishes."""
    hosts = ("127.0.0.1", "localhost")
    roots = [_ml_root(tmp_path / f"host{i}", recs, pipe=True, hosts=hosts, current=h) for i, h in enumerate(hosts)]
    for root in roots:  # each host's part of the train channel may change from pass to pass (ShuffleConfig)
        config = root / "input" / "config" / "inputdataconfig.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {"train": {
            "TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key", "RecordWrapperType": "None"}}))
    fewer = cut_rec(recs["train"], tmp_path / "fewer.rec", 0, 32)
    writers = _sagemaker_pipes(roots[0] / "input" / "data", {"train": [recs["train"], fewer],
                                                             "validation": [recs["validation"]] * 2})
    writers += _sagemaker_pipes(roots[1] / "input" / "data", {"train": [recs["train"]] * 2,
                                                              "validation": [recs["validation"]] * 2})
    logs = _train_hosts(roots)
    for w in writers:
        w.join(10)
        assert not w.is_alive()
    assert "Pipe pass 1 of the train channel: a new stream" in logs[0]
    assert "Pipe pass 1 of the train channel: the same stream as before" in logs[1]
    assert "train channel is ShardedByS3Key: 32 images on this host, 96 over 2 hosts; 64 per rank" in logs[0]
    for log in logs:
        assert "Rebuilt training data" in log and "4 batches per epoch on this rank" in log  # 64 per rank / 16
    accuracy = [re.findall(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)", log) for log in logs]
    assert accuracy[0] == accuracy[1] and len(accuracy[0]) == 2


def test_a_host_with_fewer_sharded_images_than_processes_is_refused(tmp_path):
    from openic.data.sources import Channel
    from openic.errors import ClientError
    from openic.train.distributed import World
    from openic.train.setup import _deal

    class Tiny:
        def __len__(self) -> int:
            return 1

    with pytest.raises(ClientError, match="has 1 image\\(s\\) on this host, fewer than its 2 processes"):
        _deal("train", Channel("train", tmp_path, sharded=True), Tiny(), World(0, 4, 0, 2))
