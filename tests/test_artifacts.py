import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import FIXTURES
from safetensors import safe_open
from safetensors.torch import load as st_load

import openic.artifacts.model as artifacts
import openic.artifacts.resume as checkpoint
import openic.fileio as fileio
from openic.artifacts import (
    LoadedModel,
    checkpoint_name,
    load_checkpoint,
    load_model,
    read_model_metadata,
    safe_extract,
    save_checkpoint,
    save_model,
)
from openic.errors import ClientError
from openic.hyperparams import HyperParameters
from openic.models.resnet import create_model

SHAPE = (3, 16, 16)
CLASSES = ["cat", "dog", "fish", "owl"]


@pytest.fixture
def hp():
    return HyperParameters.from_strings({"num_layers": "20", "num_classes": "4", "image_shape": "3,16,16",
                                         "num_training_samples": "64", "epochs": "3", "top_k": "2"})


def trained_model(seed=0):
    """A small ResNet whose BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(seed)
    model = create_model(20, 4, SHAPE)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, *SHAPE) * 255)
    return model.eval()


def members(path):
    with tarfile.open(path) as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar}


def test_round_trip_gives_identical_outputs(tmp_path, hp):
    model = trained_model()
    path = save_model(tmp_path / "out", model, hp, epoch=2, class_names=CLASSES,
                      metrics={"validation:accuracy": 0.75, "train:loss": float("nan")})
    assert path == tmp_path / "out" / "model.tar.gz"
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    x = torch.rand(5, *SHAPE) * 255
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.class_names == CLASSES
    assert loaded.hyperparameters == hp.to_strings()
    meta = loaded.metadata
    assert (meta["num_layers"], meta["num_classes"], meta["image_shape"], meta["epoch"]) == (20, 4, [3, 16, 16], 2)
    assert meta["metrics"] == {"validation:accuracy": 0.75, "train:loss": None}
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["value_range"] == [0, 255]
    assert meta["input"]["mean"] is None and meta["input"]["std"] is None
    assert meta["torch_version"] == torch.__version__ and meta["openic_version"]
    assert meta["git_sha"] is None or len(meta["git_sha"]) == 40


def test_loads_from_extracted_dir_and_from_dir_holding_the_archive(tmp_path, hp):
    model = trained_model()
    path = save_model(tmp_path / "out", model, hp, epoch=0)
    extracted = safe_extract(path, tmp_path / "x")
    assert sorted(p.name for p in extracted) == sorted(members(path))
    x = torch.rand(2, *SHAPE) * 255
    for source in (tmp_path / "x", tmp_path / "out"):
        loaded = load_model(source)
        assert loaded.class_names is None
        with torch.no_grad():
            assert torch.equal(loaded.model(x), model(x))


def test_archive_layout_is_deterministic_and_pickle_free(tmp_path, hp):
    model = trained_model()
    a = save_model(tmp_path / "a", model, hp, epoch=1, class_names=CLASSES)
    b = save_model(tmp_path / "b", model, hp, epoch=1, class_names=CLASSES)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime
    files = members(a)
    assert list(files) == sorted(files)
    assert set(files) == {"model.safetensors", "model-shapes.json", "hyperparameters.json", "classes.json",
                          "metadata.json"}
    for name, (info, data) in files.items():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
        assert name.endswith((".json", ".safetensors")) and not name.endswith((".pt", ".pth", ".pkl", ".params"))
        if name.endswith(".json"):
            json.loads(data)
        else:
            assert set(st_load(data)) == set(model.state_dict())
        assert b"\x80\x04\x95" not in data[:64] and not data.startswith(b"\x80")  # no pickle stream
    assert files["model-shapes.json"][1] == b'[{"name": "data", "shape": [1, 3, 16, 16]}]'
    assert json.loads(files["classes.json"][1]) == CLASSES
    assert json.loads(files["hyperparameters.json"][1]) == hp.to_strings()  # SageMaker sends and stores string values


def test_compile_and_dataparallel_prefixes_are_stripped(tmp_path, hp):
    model = trained_model()
    wrapped = torch.nn.DataParallel(torch.compile(model))
    assert all(k.startswith("module._orig_mod.") for k in wrapped.state_dict())
    path = save_model(tmp_path, wrapped, hp, epoch=0, checkpoints={0: wrapped.state_dict()})
    files = members(path)
    for name in ("model.safetensors", checkpoint_name(0)):
        assert set(st_load(files[name][1])) == set(model.state_dict())
    load_model(path)


def test_ddp_prefix_is_stripped(tmp_path, hp):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = trained_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert all(k.startswith("module.") for k in ddp.state_dict())
        assert artifacts.unwrap_model(ddp) is model
        path = save_model(tmp_path / "m", ddp, hp, epoch=0)
        assert set(st_load(members(path)["model.safetensors"][1])) == set(model.state_dict())
        save_checkpoint(tmp_path / "ck", model=ddp, optimizer=torch.optim.SGD(ddp.parameters(), lr=0.1), state={})
        load_checkpoint(tmp_path / "ck", model=create_model(20, 4, SHAPE),
                        optimizer=torch.optim.SGD(create_model(20, 4, SHAPE).parameters(), lr=0.1))
    finally:
        dist.destroy_process_group()


def test_checkpoint_frequency_checkpoints(tmp_path, hp):
    states = {e: trained_model(seed=e).state_dict() for e in (0, 2)}
    path = save_model(tmp_path, trained_model(seed=9), hp, epoch=2, checkpoints=states)
    files = members(path)
    assert {"image-classification-0001.safetensors", "image-classification-0003.safetensors"} <= set(files)
    assert read_model_metadata(path)["checkpoints"] == {"0": "image-classification-0001.safetensors",
                                                        "2": "image-classification-0003.safetensors"}
    x = torch.rand(2, *SHAPE) * 255
    with torch.no_grad():
        assert torch.equal(load_model(path, checkpoint_epoch=2).model(x), trained_model(seed=2)(x))
    with pytest.raises(ClientError, match=r"image-classification-0002\.safetensors is missing.*stored: \[0, 2\]"):
        load_model(path, checkpoint_epoch=1)


def test_read_model_metadata_does_not_build_the_model(tmp_path, hp, monkeypatch):
    path = save_model(tmp_path, trained_model(), hp, epoch=0)
    monkeypatch.setattr(artifacts, "create_model", lambda *a: pytest.fail("model built"))
    meta = read_model_metadata(tmp_path)  # a model channel: a folder holding model.tar.gz
    assert (meta["num_layers"], meta["num_classes"], meta["image_shape"]) == (20, 4, [3, 16, 16])
    assert read_model_metadata(path) == meta


def test_clear_errors_for_bad_artifacts(tmp_path, hp):
    path = save_model(tmp_path / "m", trained_model(), hp, epoch=0)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.tar.gz")
    safe_extract(path, tmp_path / "x")
    (tmp_path / "x" / "metadata.json").unlink()
    with pytest.raises(ClientError, match=r"metadata\.json is missing .*model\.safetensors"):
        load_model(tmp_path / "x")
    safe_extract(path, tmp_path / "y")
    (tmp_path / "y" / "model.safetensors").unlink()
    with pytest.raises(ClientError, match=r"model\.safetensors is missing"):
        load_model(tmp_path / "y")
    meta = json.loads((tmp_path / "y" / "metadata.json").read_text())
    (tmp_path / "y" / "model.safetensors").write_bytes(members(path)["model.safetensors"][1])
    (tmp_path / "y" / "metadata.json").write_text(json.dumps(meta | {"num_classes": 5}))
    with pytest.raises(ClientError, match=r"model\.safetensors: weights do not fit.*shape mismatch.*fc1"):
        load_model(tmp_path / "y")
    del meta["num_layers"]
    (tmp_path / "y" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ClientError, match="lacks num_layers"):
        read_model_metadata(tmp_path / "y")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ClientError, match="junk.tar.gz"):
        load_model(tmp_path / "junk.tar.gz")
    with pytest.raises(ClientError, match="3 class names"):
        save_model(tmp_path / "z", trained_model(), hp, epoch=0, class_names=CLASSES[:3])


def test_sagemaker_mxnet_artifact_loads_as_such(tmp_path):
    """SageMaker's own artifacts load too (tests/test_mxnet_import.py checks them in depth)."""
    path = FIXTURES / "mxnet_models" / "resnet20_3x28x28_c10" / "model.tar.gz"
    assert load_model(path).metadata["format"] == "sagemaker-mxnet"


def craft_tar(path, *entries):
    """entries: (name, kind, target) with kind file/dir/sym/hard/chr/fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = b"payload"
                info.size = len(data)
            else:
                info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                             "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
                info.linkname = target or ""
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("entries, bad, why", [
    ([("ok.txt", "file", None), ("../evil", "file", None)], "../evil", "'..'"),
    ([("a/../../evil", "file", None)], "a/../../evil", "'..'"),
    ([("/tmp/evil", "file", None)], "/tmp/evil", "absolute"),
    ([("link", "sym", "/etc/passwd")], "link", "absolute"),
    ([("link", "sym", "../outside")], "link", "outside"),
    ([("sub", "dir", None), ("sub/link", "sym", "../../outside")], "sub/link", "outside"),
    ([("x", "sym", "."), ("a", "sym", "x/..")], "a", "outside"),  # only caught by following x on disk
    ([("ok", "sym", "."), ("ok/../escape", "file", None)], "ok/../escape", "'..'"),
    ([("hard", "hard", "../outside")], "hard", "outside"),
    ([("hard", "hard", "/etc/passwd")], "hard", "absolute"),
    ([("dev", "chr", None)], "dev", "device"),
    ([("pipe", "fifo", None)], "pipe", "FIFO"),
])
def test_safe_extract_refuses_escaping_members(tmp_path, entries, bad, why):
    archive = craft_tar(tmp_path / "bad.tar.gz", *entries)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(ClientError, match=rf"refusing tar member '{bad}'.*{why}"):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "evil").exists()
    assert not (dest / "ok.txt").exists()  # checked before anything is written


def test_safe_extract_keeps_links_inside(tmp_path):
    archive = craft_tar(tmp_path / "good.tar.gz", ("d", "dir", None), ("d/f.txt", "file", None),
                        ("d/rel", "sym", "f.txt"), ("same", "hard", "d/f.txt"))
    paths = safe_extract(archive, tmp_path / "out")
    assert [p.name for p in paths] == ["d", "f.txt", "rel", "same"]
    assert (tmp_path / "out" / "d" / "rel").read_bytes() == b"payload"
    assert (tmp_path / "out" / "same").read_bytes() == b"payload"


def tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 3))


def train_steps(model, optimizer, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 6, 6, generator=g)).square().mean().backward()
        optimizer.step()


def assert_same_optimizer_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid, entries in sa["state"].items():
        for name, value in entries.items():
            other = sb["state"][pid][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


class FakeScaler:
    """GradScaler-like: a tensor scale plus plain numbers."""

    def __init__(self, scale=65536.0, tracker=0):
        self.state = {"scale": torch.tensor(scale), "growth_factor": 2.0, "backoff_factor": 0.5,
                      "_growth_tracker": tracker}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99), amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_round_trip_resumes_exactly(tmp_path, name):
    torch.manual_seed(1)
    model = tiny_model()
    optimizer = OPTIMIZERS[name](model.parameters())
    train_steps(model, optimizer)
    scaler = FakeScaler(1024.0, tracker=7)
    state = {"epoch": 4, "best_accuracy": float("-inf"), "history": [{"epoch": 0, "loss": float("nan")}],
             "by_epoch": {3: (0.5, None)}, "generator": torch.Generator().manual_seed(3).get_state(),
             "array": np.arange(5, dtype=np.uint32), "name": "run"}
    save_checkpoint(tmp_path / "last", model=model, optimizer=optimizer, scaler=scaler, state=state)
    expected = (torch.rand(4), random.random(), np.random.rand(3))

    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    model2 = tiny_model()
    optimizer2 = OPTIMIZERS[name](model2.parameters())
    scaler2 = FakeScaler()
    got = load_checkpoint(tmp_path / "last", model=model2, optimizer=optimizer2, scaler=scaler2)
    assert torch.equal(torch.rand(4), expected[0]) and random.random() == expected[1]
    assert np.array_equal(np.random.rand(3), expected[2])
    assert got["epoch"] == 4 and got["best_accuracy"] == float("-inf") and got["name"] == "run"
    assert np.isnan(got["history"][0]["loss"]) and got["by_epoch"] == {3: (0.5, None)}
    assert torch.equal(got["generator"], state["generator"])
    assert got["array"].dtype == np.uint32 and np.array_equal(got["array"], state["array"])
    assert torch.equal(scaler2.state["scale"], torch.tensor(1024.0)) and scaler2.state["_growth_tracker"] == 7
    assert_same_optimizer_state(optimizer, optimizer2)
    assert type(optimizer2.param_groups[0].get("betas", ())) is tuple
    train_steps(model, optimizer, seed=5)
    train_steps(model2, optimizer2, seed=5)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_with_real_grad_scaler_and_compiled_model(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    save_checkpoint(tmp_path / "ck", model=torch.compile(model), optimizer=optimizer, scaler=scaler, state={})
    with safe_open(str(tmp_path / "ck"), framework="pt") as f:
        assert all(k.startswith(("model/", "optimizer/", "rng/")) for k in f.keys())
        assert "model/0.weight" in f.keys()
        json.loads(f.metadata()["openic_checkpoint"])
    scaler2 = torch.amp.GradScaler("cpu")
    model2 = tiny_model()
    load_checkpoint(tmp_path / "ck", model=torch.compile(model2), optimizer=torch.optim.SGD(model2.parameters(),
                    lr=0.1, momentum=0.9), scaler=scaler2)
    assert scaler2.state_dict() == scaler.state_dict()


def test_checkpoint_survives_a_crash_before_rename(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "checkpoints" / "last"
    save_checkpoint(path, model=model, optimizer=optimizer, state={"epoch": 1})

    def crash(*args):
        raise KeyboardInterrupt("killed between the temp write and the rename")

    monkeypatch.setattr(fileio.os, "replace", crash)  # atomic_path lives in openic.fileio
    train_steps(model, optimizer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=optimizer, state={"epoch": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last"]
    (path.parent / ".last.tmp-999999").write_bytes(b"\x00" * 100)  # what a kill -9 mid-write leaves behind
    fresh = tiny_model()
    assert load_checkpoint(path, model=fresh, optimizer=torch.optim.Adam(fresh.parameters())) == {"epoch": 1}
    save_checkpoint(path, model=model, optimizer=optimizer, state={"epoch": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last"]


KILL_SCRIPT = """
import os, signal, sys, torch
import openic.artifacts.resume as c
from safetensors.torch import save

model = torch.nn.Linear(256, 256)
opt = torch.optim.Adam(model.parameters())
c.save_checkpoint(sys.argv[1], model=model, optimizer=opt, state={"i": 0})

def half_write_then_die(tensors, filename, metadata=None):
    data = save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

c.st_save_file = half_write_then_die
model(torch.randn(2, 256)).sum().backward()
opt.step()
c.save_checkpoint(sys.argv[1], model=model, optimizer=opt, state={"i": 1})
"""


def test_checkpoint_survives_kill_9_mid_write(tmp_path):
    path = tmp_path / "last"
    env = {**os.environ, "PYTHONPATH": str(Path(artifacts.__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert any(p.name.startswith(".last.tmp-") for p in tmp_path.iterdir())  # the torn write is there...
    model = torch.nn.Linear(256, 256)
    assert load_checkpoint(path, model=model, optimizer=torch.optim.Adam(model.parameters())) == {"i": 0}  # ...unread


def test_checkpoint_errors(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, state={})
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ClientError, match=r"ck: weights do not fit.*missing.*unexpected"):
        load_checkpoint(tmp_path / "ck", model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    fewer = torch.optim.SGD(list(model.parameters())[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ClientError, match="optimizer state does not fit"):
        load_checkpoint(tmp_path / "ck", model=tiny_model(), optimizer=fewer)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing", model=model, optimizer=optimizer)
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ClientError, match="junk"):
        load_checkpoint(tmp_path / "junk", model=model, optimizer=optimizer)
    with pytest.raises(TypeError, match="state/bad"):
        save_checkpoint(tmp_path / "ck2", model=model, optimizer=optimizer, state={"bad": object()})
    assert not (tmp_path / "ck2").exists()


def test_no_pickle_is_ever_used(tmp_path, hp, monkeypatch):
    for module in (artifacts, checkpoint):
        source = Path(module.__file__).read_text()
        assert not re.search(r"import pickle|from pickle|pickle\.|torch\.load\(|weights_only", source)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    path = save_model(tmp_path, trained_model(), hp, epoch=0)
    load_model(path)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, state={})
    load_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
