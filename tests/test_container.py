"""SageMaker's training-container layout (openic.train.container) and the image's entry point (docker/entrypoint.sh).

Every ml-root is built in ``tmp_path`` with tiny ``.rec`` files written by openic's own RecordWriter; Pipe mode uses
real FIFOs fed by a writer thread. No Docker, no network (DNS is asked only about ``localhost`` and ``.invalid``).
"""

import hashlib
import ipaddress
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mxnet_helpers import write_tar

from openic.data.sources import Channel, RecordSource
from openic.errors import ClientError
from openic.formats.recordio import IRHeader, RecordWriter, pack
from openic.train import container, pipe_feed
from openic.train.container import load_container_job, publish_model, resolve_master
from openic.train.distributed import World
from openic.train.pipe_feed import PipeFeed, prepare_pipe_channels, spool_pipe

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def write_rec(path: Path, count: int, payload_size: int = 32) -> Path:
    """``count`` records with labels 0/1 and deterministic fake payloads (the container code never decodes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with RecordWriter(path) as writer:
        for i in range(count):
            payload = bytes((i * 7 + j) % 251 for j in range(payload_size))
            writer.write(pack(IRHeader(0, float(i % 2), i, 0), payload), key=i)
    return path


def make_root(tmp_path: Path, *, hyper=None, data_config=None, resource=None, folders=("train", "validation")) -> Path:
    root = tmp_path / "ml"
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for name, value in (("hyperparameters", hyper), ("inputdataconfig", data_config), ("resourceconfig", resource)):
        if value is not None:
            (config / f"{name}.json").write_text(value if isinstance(value, str) else json.dumps(value))
    data = root / "input" / "data"
    data.mkdir(parents=True)
    for name in folders:
        (data / name).mkdir()
        if name in ("train", "validation"):
            write_rec(data / name / f"{name}.rec", 4)
    return root


def feed_fifo(fifo: Path, data: bytes, chunk: int = 100_003) -> threading.Thread:
    """SageMaker's side of a Pipe: open the FIFO for writing (blocks until read), write ``data`` in odd chunks."""
    def write():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


# ---- load_container_job ----

def test_full_layout_channels_lst_folding_modes_label_format_and_hosts(tmp_path):
    files = {"ContentType": "application/x-image", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
             "RecordWrapperType": "None"}
    data_config = {
        "train": {**files, "ContentType": "application/x-recordio; label-format=class-id",
                  "S3DistributionType": "ShardedByS3Key"},
        "validation": {**files, "ContentType": "application/x-recordio;label-format=\"class-id\"",
                       "TrainingInputMode": "FastFile"},
        "train_lst": files, "validation_lst": files,
        "model": {**files, "ContentType": "application/x-sagemaker-model"}}
    resource = {"current_host": "algo-2", "hosts": ["algo-3", "algo-1", "algo-2"], "network_interface_name": "eth1"}
    hyper = {"num_classes": "2", "epochs": 3, "learning_rate": 0.1, "image_shape": "3,28,28", "top_k": None}
    root = make_root(tmp_path, hyper=hyper, data_config=data_config, resource=resource,
                     folders=("train", "validation", "train_lst", "validation_lst", "model"))
    job = load_container_job(root)
    data = root / "input" / "data"
    assert job.hyperparameters == {"num_classes": "2", "epochs": "3", "learning_rate": "0.1", "image_shape": "3,28,28"}
    assert set(job.channels) == {"train", "validation", "model"}  # the *_lst channels are folded in
    assert job.channels["train"].path == data / "train" and job.channels["train"].lst == data / "train_lst"
    assert job.channels["validation"].lst == data / "validation_lst"
    assert job.channels["model"].path == data / "model" and job.channels["model"].lst is None
    assert job.input_modes == {"train": "File", "validation": "FastFile", "train_lst": "File",
                               "validation_lst": "File", "model": "File"}
    assert job.content_types["model"] == "application/x-sagemaker-model"
    assert job.label_format == "class-id"
    assert (job.output_dir, job.model_dir, job.checkpoint_dir) == (root / "output", root / "model",
                                                                    root / "checkpoints")
    assert job.failure_file == root / "output" / "failure"
    assert job.hosts == ["algo-1", "algo-2", "algo-3"] and job.current_host == "algo-2"
    assert (job.node_rank, job.nnodes, job.master_addr) == (1, 3, "algo-1")


def test_defaults_without_config_files(tmp_path):
    job = load_container_job(make_root(tmp_path))
    assert job.hyperparameters == {} and job.content_types == {} and job.label_format is None
    assert job.input_modes == {"train": "File", "validation": "File"}
    assert job.channels["train"].lst is None
    assert (job.hosts, job.current_host, job.node_rank, job.nnodes) == (["algo-1"], "algo-1", 0, 1)


def test_a_channel_on_disk_but_not_in_the_config_is_used_in_file_mode(tmp_path):
    data_config = {"train": {"ContentType": "application/x-recordio; label-format=multi-hot"}}
    job = load_container_job(make_root(tmp_path, data_config=data_config, folders=("train", "validation", "model")))
    assert set(job.channels) == {"train", "validation", "model"}
    assert job.input_modes == {"train": "File", "validation": "File", "model": "File"}
    assert job.label_format == "multi-hot"


@pytest.mark.parametrize("name", ["hyperparameters", "inputdataconfig", "resourceconfig"])
def test_bad_json_names_the_file_and_the_position(tmp_path, name):
    root = make_root(tmp_path, **{{"hyperparameters": "hyper", "inputdataconfig": "data_config",
                                   "resourceconfig": "resource"}[name]: '{"a": 1,\n "b": }'})
    with pytest.raises(ClientError, match=rf"{name}\.json.*line 2 column 7"):
        load_container_job(root)


@pytest.mark.parametrize("name", ["hyperparameters", "inputdataconfig", "resourceconfig"])
def test_a_config_that_is_not_an_object_is_refused(tmp_path, name):
    key = {"hyperparameters": "hyper", "inputdataconfig": "data_config", "resourceconfig": "resource"}[name]
    with pytest.raises(ClientError, match=rf"{name}\.json.*list"):
        load_container_job(make_root(tmp_path, **{key: "[1, 2]"}))


def test_unknown_channels_are_refused_with_the_valid_names(tmp_path):
    with pytest.raises(ClientError, match=r"inputdataconfig\.json.*'validaton'.*train, validation, train_lst, "
                                          r"validation_lst, model"):
        load_container_job(make_root(tmp_path, data_config={"validaton": {}}))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ClientError, match=r"data/test.*unknown channel 'test'.*valid channels: train"):
        load_container_job(make_root(other, folders=("train", "test")))


def test_a_file_mode_channel_without_its_folder_names_the_path(tmp_path):
    root = make_root(tmp_path, data_config={"train": {"TrainingInputMode": "File"},
                                            "validation": {"TrainingInputMode": "File"}}, folders=("train",))
    with pytest.raises(ClientError, match=r"'validation' is in File mode but its folder .*input/data/validation "
                                          r"does not exist"):
        load_container_job(root)


@pytest.mark.parametrize("entry,match", [
    ({"TrainingInputMode": "Stream"}, r"TrainingInputMode 'Stream' is not valid; expected one of File, Pipe, FastFile"),
    ({"S3DistributionType": "Random"}, r"S3DistributionType 'Random' .*FullyReplicated, ShardedByS3Key"),
    ({"ContentType": 5}, r"ContentType 5 is not valid; expected a string"),
    ({"ContentType": "application/x-recordio; label-format=one-hot"}, r"label-format 'one-hot' .*multi-hot, class-id"),
    ("File", r"channel 'train' must map to a JSON object"),
])
def test_bad_channel_settings_are_refused(tmp_path, entry, match):
    with pytest.raises(ClientError, match=match):
        load_container_job(make_root(tmp_path, data_config={"train": entry}))


def test_channels_must_agree_on_the_label_format(tmp_path):
    data_config = {"train": {"ContentType": "application/x-recordio; label-format=class-id"},
                   "validation": {"ContentType": "application/x-recordio; label-format=multi-hot"}}
    with pytest.raises(ClientError, match="disagree on label-format"):
        load_container_job(make_root(tmp_path, data_config=data_config))


@pytest.mark.parametrize("resource,match", [
    ({"current_host": "algo-9", "hosts": ["algo-1", "algo-2"]}, r"current_host 'algo-9' is not one of the hosts"),
    ({"current_host": "algo-1", "hosts": []}, r"'hosts' must be a non-empty list"),
    ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, r"'hosts' names a host twice"),
    ({"current_host": "algo-1", "hosts": ["algo-1", "bad host"]}, r"'hosts' must be a non-empty list of host names"),
])
def test_bad_resource_config_is_refused(tmp_path, resource, match):
    with pytest.raises(ClientError, match=rf"resourceconfig\.json: {match}"):
        load_container_job(make_root(tmp_path, resource=resource))


def test_pipe_mode_from_the_config_or_from_a_fifo(tmp_path):
    root = make_root(tmp_path, data_config={"train": {"TrainingInputMode": "Pipe"}}, folders=())
    data = root / "input" / "data"
    os.mkfifo(data / "validation_0")  # no config entry: the FIFO says Pipe
    job = load_container_job(root)
    assert job.input_modes == {"train": "Pipe", "validation": "Pipe"}
    assert job.channels["train"].path == data / "train_0" and job.channels["validation"].path == data / "validation_0"


def test_pipe_mode_is_refused_for_lst_and_model_channels(tmp_path):
    root = make_root(tmp_path, data_config={"model": {"TrainingInputMode": "Pipe"}}, folders=("train", "model"))
    with pytest.raises(ClientError, match=r"'model' cannot use Pipe mode \(only train, validation"):
        load_container_job(root)


def test_an_lst_channel_needs_its_images_channel(tmp_path):
    with pytest.raises(ClientError, match=r"'validation_lst' needs the 'validation' channel"):
        load_container_job(make_root(tmp_path, folders=("train", "validation_lst")))


# ---- Pipe mode ----

def test_spool_pipe_copies_a_fifo_stream_byte_for_byte(tmp_path):
    # two .rec files back to back, as SageMaker concatenates a prefix's objects; > 2 read chunks long
    first, second = write_rec(tmp_path / "a.rec", 60, 40_000), write_rec(tmp_path / "b.rec", 3)
    stream = first.read_bytes() + second.read_bytes()
    assert len(stream) > 2 * pipe_feed.SPOOL_CHUNK
    fifo = tmp_path / "train_0"
    os.mkfifo(fifo)
    writer = feed_fifo(fifo, stream)
    digest = spool_pipe(fifo, tmp_path / "work" / "train" / "train.rec")
    writer.join(10)
    dest = tmp_path / "work" / "train" / "train.rec"
    assert dest.read_bytes() == stream and digest == hashlib.sha256(stream).hexdigest()
    assert len(RecordSource([dest])) == 63


@pytest.mark.parametrize("data,match", [
    (b"", r"Empty Pipe-mode stream .*train_0"),
    (b'{"source-ref": "s3://b/x.jpg"}\n' * 3, r"train_0: Unable to parse record: The Record IO header does not start"),
])
def test_spool_pipe_refuses_empty_and_non_recordio_streams(tmp_path, data, match):
    fifo = tmp_path / "train_0"
    os.mkfifo(fifo)
    writer = feed_fifo(fifo, data)
    with pytest.raises(ClientError, match=match):
        spool_pipe(fifo, tmp_path / "out" / "train.rec")
    writer.join(10)
    assert list((tmp_path / "out").iterdir()) == []  # no partial file left behind


def test_spool_pipe_names_a_missing_fifo(tmp_path):
    with pytest.raises(ClientError, match=r"Pipe-mode stream .*train_0 does not exist"):
        spool_pipe(tmp_path / "train_0", tmp_path / "out.rec")


def test_prepare_pipe_channels_spools_epoch_0_and_repoints_the_channel(tmp_path):
    root = make_root(tmp_path, data_config={"train": {"TrainingInputMode": "Pipe"},
                                            "validation": {"TrainingInputMode": "File"}}, folders=("validation",))
    data = root / "input" / "data"
    stream = write_rec(tmp_path / "src.rec", 6).read_bytes()
    os.mkfifo(data / "train_0")
    os.mkfifo(data / "train_1")  # read by the training loop before epoch 1, not here (nothing writes this one)
    job = load_container_job(root)
    writer = feed_fifo(data / "train_0", stream)
    prepare_pipe_channels(job, tmp_path / "work")
    writer.join(10)
    spooled = tmp_path / "work" / "train" / "train.rec"
    assert job.channels["train"].path == spooled and spooled.read_bytes() == stream
    assert job.channels["train"].pipe_fifo == data / "train"  # passes 1, 2, ... come from train_1, train_2, ...
    assert job.channels["validation"].path == data / "validation"  # File mode: untouched
    assert len(RecordSource([job.channels["train"].path])) == 6


def _open_pass(data: Path, name: str, k: int, stream: bytes, after_s: float = 0.0) -> threading.Thread:
    """SageMaker opening pass ``k`` of a channel: its FIFO appears (``after_s`` later), then is fed ``stream``."""
    def run():
        time.sleep(after_s)
        os.mkfifo(data / f"{name}_{k}")
        feed_fifo(data / f"{name}_{k}", stream).join(30)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_pipe_feed_reads_every_pass_and_keeps_a_copy_only_when_the_stream_changed(tmp_path):
    data, folder = tmp_path / "data", tmp_path / "work" / "train"
    data.mkdir()
    same, other = write_rec(tmp_path / "a.rec", 6).read_bytes(), write_rec(tmp_path / "b.rec", 4, 20).read_bytes()
    folder.mkdir(parents=True)
    (folder / "train.rec").write_bytes(same)  # pass 0, spooled before the ranks started (no state: it is hashed)
    channel = Channel("train", folder / "train.rec", pipe_fifo=data / "train")
    feed = PipeFeed({"train": channel, "validation": Channel("validation", tmp_path / "val.rec")}, World())
    writer = _open_pass(data, "train", 1, same, after_s=0.5)  # the reader waits for the FIFO to appear
    assert feed.advance() is None
    writer.join(10)
    assert not writer.is_alive() and sorted(p.name for p in folder.iterdir()) == ["pipe-state.json", "train.rec"]
    writer = _open_pass(data, "train", 2, other)
    fresh = feed.advance()
    assert fresh is not None and set(fresh) == {"train"}  # File-mode channels are not touched
    assert fresh["train"].path == folder / "train-2.rec" and fresh["train"].path.read_bytes() == other
    assert sorted(p.name for p in folder.iterdir()) == ["pipe-state.json", "train-2.rec"]  # the old copy went
    _open_pass(data, "train", 3, other)
    assert feed.advance() is None  # pass 3 is pass 2 again
    assert pipe_feed._in_use(channel) == folder / "train-2.rec"  # where a restarted rank would start
    _open_pass(data, "train", 4, same)
    assert feed.advance()["train"].path.name == "train-4.rec"
    assert sorted(p.name for p in folder.iterdir()) == ["pipe-state.json", "train-4.rec"]
    assert json.loads((folder / "pipe-state.json").read_text())["next"] == 5


def test_pipe_feed_names_a_pass_that_never_comes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENIC_PIPE_WAIT_S", "0.3")
    base = write_rec(tmp_path / "work" / "train" / "train.rec", 2)
    feed = PipeFeed({"train": Channel("train", base, pipe_fifo=tmp_path / "train")}, World())
    with pytest.raises(ClientError, match=r"Pipe-mode stream .*train_1 did not appear within 0.3 s"):
        feed.advance()


def test_pipe_feed_names_a_pass_that_gets_no_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENIC_PIPE_WAIT_S", "0.5")
    base = write_rec(tmp_path / "work" / "train" / "train.rec", 2)
    os.mkfifo(tmp_path / "train_1")  # it appears, but SageMaker never writes it
    feed = PipeFeed({"train": Channel("train", base, pipe_fifo=tmp_path / "train")}, World())
    with pytest.raises(ClientError, match=r"Pipe-mode stream .*train_1: nobody wrote to it within 0.5 s"):
        feed.advance()
    assert sorted(p.name for p in base.parent.iterdir()) == ["train.rec"]  # no partial copy, no state change


@pytest.mark.parametrize("raw", ["0", "-1", "x", "4000"])
def test_pipe_wait_from_the_environment_is_bounded(monkeypatch, raw):
    monkeypatch.setenv("OPENIC_PIPE_WAIT_S", raw)
    with pytest.raises(ClientError, match=f"OPENIC_PIPE_WAIT_S='{raw}' is not valid"):
        pipe_feed.pipe_wait_s()


def test_prepare_pipe_channels_gives_ranks_the_newest_pass_and_a_new_run_a_fresh_start(tmp_path):
    root = make_root(tmp_path, data_config={"train": {"TrainingInputMode": "Pipe"}}, folders=("validation",))
    data, work = root / "input" / "data", tmp_path / "work"
    stream = write_rec(tmp_path / "src.rec", 3).read_bytes()
    os.mkfifo(data / "train_0")
    writer = feed_fifo(data / "train_0", stream)
    job = load_container_job(root)
    prepare_pipe_channels(job, work)
    writer.join(10)
    (work / "train" / "train-2.rec").write_bytes(stream)  # as PipeFeed leaves it after a changed pass 2
    pipe_feed._write_state(work / "train", 3, work / "train" / "train-2.rec", "x")
    restarted = load_container_job(root)
    prepare_pipe_channels(restarted, work, reuse=True)  # a rank restarted by --max-restarts
    assert restarted.channels["train"].path == work / "train" / "train-2.rec"
    writer = feed_fifo(data / "train_0", stream)
    again = load_container_job(root)
    prepare_pipe_channels(again, work)  # a new run on this host: pass 0 again, the old passes forgotten
    writer.join(10)
    assert again.channels["train"].path == work / "train" / "train.rec"
    assert sorted(p.name for p in (work / "train").iterdir()) == ["pipe-state.json", "train.rec"]
    assert json.loads((work / "train" / "pipe-state.json").read_text())["next"] == 1


# ---- publish_model ----

def test_publish_model_puts_the_archive_contents_into_model_dir(tmp_path):
    members = {"model.safetensors": b"weights", "model.json": b"{}", "extra/classes.txt": b"cat\ndog\n"}
    model_dir = tmp_path / "ml" / "model"
    model_dir.mkdir(parents=True)
    inside = write_tar(model_dir / "model.tar.gz", members)
    publish_model(inside, model_dir)
    assert {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()} == set(members)
    assert (model_dir / "extra" / "classes.txt").read_bytes() == b"cat\ndog\n"
    assert not inside.exists()  # else SageMaker's model.tar.gz would hold a copy of itself
    elsewhere = write_tar(tmp_path / "out.tar.gz", members)
    publish_model(elsewhere, tmp_path / "other")
    assert elsewhere.exists() and (tmp_path / "other" / "model.json").read_bytes() == b"{}"


def test_publish_model_refuses_a_member_escaping_model_dir(tmp_path):
    bad = write_tar(tmp_path / "bad.tar.gz", {"model.json": b"{}", "../escape": b"x"})
    with pytest.raises(ClientError, match=r"bad\.tar\.gz: refusing tar member '\.\./escape'"):
        publish_model(bad, tmp_path / "model")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "model" / "model.json").exists()


# ---- resolve_master ----

def test_resolve_master_returns_an_address():
    assert ipaddress.ip_address(resolve_master("localhost", attempts=1)).is_loopback
    assert resolve_master("127.0.0.1") == "127.0.0.1"


def test_resolve_master_names_a_host_that_never_resolves():
    with pytest.raises(ClientError, match=r"cannot resolve the master host 'no-such-host\.invalid' after 2 attempts"):
        resolve_master("no-such-host.invalid", attempts=2, delay_s=0.01)


def test_resolve_master_retries_until_dns_answers(monkeypatch):
    calls = []
    real = container.socket.getaddrinfo

    def flaky(host, *args, **kwargs):
        calls.append(host)
        if len(calls) < 3:
            raise container.socket.gaierror(-2, "Name or service not known")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(container.socket, "getaddrinfo", flaky)
    assert resolve_master("algo-1", attempts=5, delay_s=0.001) == "127.0.0.1"
    assert calls == ["algo-1"] * 3


# ---- the image's entry point ----

@pytest.fixture()
def fake_openic(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "openic"
    fake.write_text('#!/bin/sh\nprintf "openic"\nprintf " %s" "$@"\nprintf "\\n"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "OPENIC_ML_ROOT"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_entry(env, *args):
    return subprocess.run([str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=10)


def test_entrypoint_maps_train_and_serve_and_runs_anything_else(fake_openic):
    assert os.access(ENTRYPOINT, os.X_OK)
    train = run_entry(fake_openic, "train")
    assert train.returncode == 0 and train.stdout == "openic train --sagemaker --ml-root /opt/ml\n"
    assert "Docker entrypoint called with argument(s): train" in train.stderr
    extra = run_entry({**fake_openic, "OPENIC_ML_ROOT": "/tmp/ml root"}, "train", "--epochs", "2")
    assert extra.stdout == "openic train --sagemaker --ml-root /tmp/ml root --epochs 2\n"
    serve = run_entry(fake_openic, "serve")
    assert serve.returncode == 0 and serve.stdout == "openic serve --host 0.0.0.0 --port 8080\n"
    other = run_entry(fake_openic, "echo", "hello")
    assert other.returncode == 0 and other.stdout == "hello\n"
    assert run_entry(fake_openic).returncode == 2


def test_the_dockerfile_copies_files_that_exist_and_the_context_keeps():
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    sources = [src for words in lines for src in words[1:-1]]
    assert "docker/entrypoint.sh" in sources and all((REPO / s).exists() for s in sources)
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert all(f"!{s.rstrip('/')}" in ignore or f"!{s.split('/')[0]}/" in ignore for s in sources)
    text = (REPO / "Dockerfile").read_text()
    assert "EXPOSE 8080" in text and 'ENTRYPOINT ["/usr/local/bin/openic-entrypoint"]' in text
