"""Distributed training on torchrun's engine (gloo on 127.0.0.1): ranks agree, batches are SageMaker's, one
artifact, uneven data finishes, a dead rank fails the job naming it, and the rerun resumes."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cut_rec

from openic.artifacts import load_model
from openic.data.loader import BatchStream
from openic.data.transforms import Augmenter
from openic.errors import ClientError
from openic.train.distributed import World, world_from_env
from openic.train.launch import LaunchOptions, free_port
from openic.train.metrics import Accuracy

OPENIC = [sys.executable, "-m", "openic"]
HP = ["--num_layers", "20", "--image_shape", "1,28,28", "--num_classes", "10", "--mini_batch_size", "16"]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory, digits_set) -> dict[str, Path]:
    """101 training images (odd: the shards need padding) and 45 validation images."""
    d = tmp_path_factory.mktemp("uneven")
    return {"train": cut_rec(digits_set.train_rec, d / "train.rec", 0, 101),
            "val": cut_rec(digits_set.val_rec, d / "val.rec", 0, 45)}


def _train_argv(data: dict[str, Path], out: Path, *extra: str, samples: int = 101) -> list[str]:
    return ["train", "--train", str(data["train"]), "--validation", str(data["val"]), "--output-dir", str(out),
            *HP, "--num_training_samples", str(samples), *extra]


def _by_rank(text: str, pattern: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for rank, value in re.findall(r"\[rank(\d+)\]: .*?" + pattern, text):
        found.setdefault(int(rank), []).append(value)
    return found


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return env | {"PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_two_processes_agree_on_everything(uneven, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([*OPENIC, *_train_argv(uneven, out, "--epochs", "2", "--nproc-per-node", "2")],
                          capture_output=True, text=True, timeout=300, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    accuracy = _by_rank(log, r"Validation-accuracy=([0-9.]+)")
    assert set(accuracy) == {0, 1} and accuracy[0] == accuracy[1] and len(accuracy[0]) == 2
    digests = _by_rank(log, r"Parameter digest on rank \d+: (\w+)")
    assert digests[0] == digests[1]  # parameters identical across ranks after training
    # mini_batch_size is per host: one host, two processes → 8 images each, global batch 16; 101 images pad to
    # 102, 51 per rank → 7 batches on both ranks
    batches = _by_rank(log, r"(\d+ training batches of \d+ images per epoch \(global batch \d+)")
    assert batches[0] == batches[1] == ["7 training batches of 8 images per epoch (global batch 16"]
    assert (out / "model.tar.gz").is_file() and not (out / "failure").exists()
    assert log.count("Model written to") == 1  # one artifact, by rank 0
    epochs = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"validation:accuracy"' in line]
    assert len(epochs) == 2  # rank 0 alone tracks
    loaded = load_model(out / "model.tar.gz")
    assert loaded.model is not None


@pytest.mark.slow
def test_two_hosts_through_torchrun_unchanged(uneven, tmp_path):
    """Two torchrun agents (node ranks 0 and 1) as two SageMaker hosts: the global batch doubles."""
    out, port = tmp_path / "out", free_port()
    argv = _train_argv(uneven, out, "--epochs", "1", "--kv_store", "dist_sync")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "openic", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env()) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    both = "".join(logs)
    batches = _by_rank(both, r"training batches of (\d+) images per epoch")
    assert batches[0] == batches[1] == ["16"]
    assert "global batch 32 = mini_batch_size 16 x 2 hosts" in both
    accuracy = _by_rank(both, r"Validation-accuracy=([0-9.]+)")
    assert accuracy[0] == accuracy[1]
    assert (out / "model.tar.gz").is_file()


def _netns(name: str, addr: str) -> None:
    """Namespace ``name`` holding its end of the veth pair (``<name>0``) at ``addr``, with loopback up."""
    for cmd in (["ip", "netns", "add", name], ["ip", "link", "set", f"{name}0", "netns", name],
                ["ip", "-n", name, "addr", "add", f"{addr}/24", "dev", f"{name}0"],
                ["ip", "-n", name, "link", "set", f"{name}0", "up"], ["ip", "-n", name, "link", "set", "lo", "up"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair (10.231.N.1 and .2), made and removed by the test; skipped
    where the machine does not allow them (then the loopback tests above stand in)."""
    tag = f"oi{os.getpid() % 100000}"
    names, subnet = (f"{tag}a", f"{tag}b"), 200 + os.getpid() % 50
    addrs = (f"10.231.{subnet}.1", f"10.231.{subnet}.2")
    try:
        subprocess.run(["ip", "link", "add", f"{names[0]}0", "type", "veth", "peer", "name", f"{names[1]}0"],
                       check=True, capture_output=True, timeout=10)
        for name, addr in zip(names, addrs, strict=True):
            _netns(name, addr)
    except (OSError, subprocess.SubprocessError) as e:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", f"{names[0]}0"], capture_output=True, timeout=10)
        pytest.skip(f"network namespaces are not available here ({e})")
    yield list(zip(names, addrs, strict=True))
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.slow
def test_two_hosts_in_network_namespaces(uneven, tmp_path, two_hosts):
    """Two "hosts" that reach each other only over their own veth link: openic's launcher on each (node ranks 0
    and 1, the master at host 0's address), each with its own output folder as on separate machines."""
    port = free_port()
    procs = []
    for rank, (ns, _) in enumerate(two_hosts):
        argv = _train_argv(uneven, tmp_path / f"host{rank}", "--epochs", "1", "--nnodes", "2", "--node-rank",
                           str(rank), "--nproc-per-node", "1", "--master-addr", two_hosts[0][1], "--master-port",
                           str(port))
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *OPENIC, *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      env=_env() | {"GLOO_SOCKET_IFNAME": f"{ns}0"}))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    both = "".join(logs)
    assert "global batch 32 = mini_batch_size 16 x 2 hosts" in both
    accuracy = _by_rank(both, r"Validation-accuracy=([0-9.]+)")
    digests = _by_rank(both, r"Parameter digest on rank \d+: (\w+)")
    assert accuracy[0] == accuracy[1] and digests[0] == digests[1]
    assert (tmp_path / "host0" / "model.tar.gz").is_file()
    assert not (tmp_path / "host1" / "model.tar.gz").exists()  # only rank 0 writes the artifact


@pytest.mark.slow
def test_dist_async_averages_the_replicas(uneven, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([*OPENIC, *_train_argv(uneven, out, "--epochs", "1", "--kv_store", "dist_async",
                                                 "--nproc-per-node", "2")],
                          capture_output=True, text=True, timeout=300, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    digests = _by_rank(log, r"Parameter digest on rank \d+: (\w+)")
    assert digests[0] == digests[1]


def _rank_pid(out: Path, rank: int) -> int | None:
    """The worker process of ``rank`` in the job writing to ``out`` (found by its environment and command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmd and f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_dead_rank_fails_the_job_naming_it_and_the_rerun_resumes(digits_set, tmp_path):
    data = {"train": digits_set.train_rec, "val": digits_set.val_rec}
    out = tmp_path / "out"
    argv = [*OPENIC, *_train_argv(data, out, "--epochs", "6", "--nproc-per-node", "2", samples=1437)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "last").exists():  # an epoch completed: something to resume from
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    time.sleep(0.3)  # into the next epoch
    pid = _rank_pid(out, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    log = proc.communicate(timeout=120)[0]
    assert time.monotonic() - killed < 60  # bounded: no hang on the dead peer
    assert proc.returncode == 1, log[-3000:]
    assert "rank 1" in log and "SIGKILL" in log, log[-3000:]
    failure = (out / "failure").read_text()
    assert failure.startswith("AlgorithmError:") and "rank 1" in failure
    rerun = subprocess.run([*argv, "--max-restarts", "1"], capture_output=True, text=True, timeout=600, env=_env())
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "Resuming from" in log and "epochs already done" in log
    assert not (out / "failure").exists()


def test_batches_are_equal_on_every_rank_and_cover_the_data():
    class _Src:
        def __init__(self, n: int) -> None:
            self.labels = torch.zeros((n, 1)).numpy()

        def __len__(self) -> int:
            return len(self.labels)

    aug = Augmenter(None, (1, 8, 8), None)
    for n, world, batch in [(101, 2, 8), (17, 3, 4), (9, 4, 2), (64, 2, 32), (5, 4, 3)]:
        images = torch.zeros((n, 1, 8, 8), dtype=torch.uint8)
        streams = [BatchStream(_Src(n), aug, batch, True, 0, images=images, rank=r, world_size=world)
                   for r in range(world)]
        orders = [s._order() for s in streams]
        assert len({len(s) for s in streams}) == 1 and len({len(o) for o in orders}) == 1
        assert all(len(s) == -(-len(o) // batch) for s, o in zip(streams, orders, strict=True))
        assert set(torch.cat(orders).tolist()) == set(range(n))
        val = [BatchStream(_Src(n), aug, batch, False, 0, images=images, rank=r, world_size=world)._order()
               for r in range(world)]
        assert sorted(torch.cat(val).tolist()) == list(range(n))  # each validation image counted once


def test_world_from_env():
    assert world_from_env({}) == World()
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.hosts, w.is_main) == (3, 4, 1, 2, 2, False)
    assert w.per_process_batch(32) == 16
    with pytest.raises(ClientError, match="divide evenly"):
        w.per_process_batch(33)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2"}):
        with pytest.raises(ClientError):
            world_from_env(bad)


def test_launch_options_are_bounded():
    for bad in ({"nproc_per_node": 0}, {"nproc_per_node": 10**6}, {"nnodes": 2, "node_rank": 2},
                {"master_port": 70000}, {"max_restarts": -1}, {"master_addr": "a b"}):
        with pytest.raises(ClientError):
            LaunchOptions(**bad)


def test_launch_flags_are_not_passed_to_the_ranks():
    from openic.cli.train import _without_launch_flags

    argv = ["train", "--nproc-per-node", "2", "--epochs", "3", "--master-port=1234", "--nnodes", "1", "--seed", "1"]
    assert _without_launch_flags(argv) == ["train", "--epochs", "3", "--seed", "1"]


def test_bad_launch_flag_is_a_client_error(uneven, tmp_path):
    proc = subprocess.run([*OPENIC, *_train_argv(uneven, tmp_path / "o", "--nproc-per-node", "0")],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and "--nproc-per-node 0 is not valid" in proc.stderr


def test_accuracy_merge_sums_over_ranks():
    acc = Accuracy(torch.device("cpu"), False, None)
    acc.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0], [0.0]]))
    merged = acc.merge(lambda t: t * 2)  # two ranks with the same counts
    assert merged.count == 4 and merged.result()["accuracy"] == 0.5


@pytest.mark.slow
def test_estimator_instance_count_two_is_two_hosts(uneven, tmp_path, monkeypatch, capsys):
    from openic.sdk import Estimator, TrainingInput
    from openic.sdk import jobs as job_store
    from openic.tracking import per_epoch, read_metrics

    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    est = Estimator(role="r", instance_count=2, instance_type="local", output_path=tmp_path / "jobs")
    est.set_hyperparameters(num_layers=20, image_shape="1,28,28", num_classes=10, num_training_samples=101,
                            mini_batch_size=16, epochs=2)
    est.fit({"train": TrainingInput(str(uneven["train"])), "validation": TrainingInput(str(uneven["val"]))},
            job_name="two-hosts")
    log = capsys.readouterr().out
    assert "global batch 32 = mini_batch_size 16 x 2 hosts" in log
    d = job_store.load_job("two-hosts")
    assert d["TrainingJobStatus"] == "Completed" and d["ResourceConfig"]["InstanceCount"] == 2
    assert Path(est.model_data).is_file()
    assert len(per_epoch(read_metrics(Path(d["OutputDir"])))) == 2
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=d["MlflowTrackingUri"])
    history = client.get_metric_history(d["MlflowRunId"], "validation:accuracy")
    assert len(history) == 2  # replayed from rank 0's metrics.jsonl


def test_estimator_refuses_sharded_channels_over_local_hosts(uneven, tmp_path, monkeypatch):
    from openic.sdk import Estimator, TrainingInput

    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    est = Estimator(role="r", instance_count=2, instance_type="local", output_path=tmp_path / "jobs")
    est.set_hyperparameters(num_layers=20, image_shape="1,28,28", num_classes=10, num_training_samples=101)
    with pytest.raises(ClientError, match="train: ShardedByS3Key with instance_count=2.*use FullyReplicated"):
        est.fit({"train": TrainingInput(str(uneven["train"]), distribution="ShardedByS3Key"),
                 "validation": TrainingInput(str(uneven["val"]))}, job_name="sharded")
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_local_gpu_hosts_each_see_their_own_gpu():
    from openic.sdk.instances import host_environment

    assert [host_environment(i, "cuda", {})["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "2"]
    user = {"CUDA_VISIBLE_DEVICES": "3, 5", "PATH": "/bin"}  # the user's choice of GPUs is kept, in its order
    assert [host_environment(i, "cuda", user)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["3", "5"]
    assert host_environment(1, "cuda", user)["PATH"] == "/bin"
    assert "CUDA_VISIBLE_DEVICES" not in host_environment(1, "cpu", {})
    assert "CUDA_VISIBLE_DEVICES" not in host_environment(1, "auto", {})  # this machine has no CUDA: the CPU
    assert host_environment(2, "cuda", user)["CUDA_VISIBLE_DEVICES"] == "3, 5"  # no GPU the user hid is invented


def test_run_hosts_starts_each_host_agent_on_its_gpu(tmp_path, monkeypatch):
    from openic.sdk import runner

    started: list[tuple[list[str], str]] = []

    class Agent:
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            started.append((cmd, env.get("CUDA_VISIBLE_DEVICES", "")))

        def wait(self) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(subprocess, "Popen", Agent)
    assert runner.run_hosts(tmp_path / "spec.json", 2, tmp_path, "cuda") == 0
    assert [(cmd[-2], gpu) for cmd, gpu in started] == [("0", "0"), ("1", "1")]


def test_gpu_hosts_beyond_the_visible_gpus_are_refused(tmp_path, monkeypatch):
    from openic.sdk import Estimator
    from openic.sdk.instances import check_gpu_hosts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpu_hosts("cuda", 1, "ml.p3.2xlarge")
    check_gpu_hosts("cpu", 4, "ml.c5.xlarge")
    with pytest.raises(ClientError, match=r"instance_count=2 .*needs 2 GPUs.*1 are visible.*instance_count <= 1"):
        check_gpu_hosts("cuda", 2, "ml.p3.2xlarge")
    with pytest.raises(ClientError, match="device 'cuda:1' with instance_count=2"):
        check_gpu_hosts("cuda:1", 2, "ml.p3.2xlarge")
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    est = Estimator(role="r", instance_count=2, instance_type="ml.p3.2xlarge", output_path=tmp_path / "jobs")
    est.set_hyperparameters(num_layers=20, image_shape="1,28,28", num_classes=10, num_training_samples=101)
    with pytest.raises(ClientError, match="needs 2 GPUs"):
        est.fit({"train": str(tmp_path / "train"), "validation": str(tmp_path / "val")}, job_name="gpus")
    assert not (tmp_path / "jobs").exists()


def _replicated_check(rank: int, port: int, counts: list[int], out) -> None:
    import torch.distributed as dist

    from openic.train.setup import _check_replicated

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(counts))
    try:
        _check_replicated("train", counts[rank])
        out.put((rank, "ok"))
    except ClientError as e:
        out.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("counts,expect", [([64, 64], "ok"), ([64, 48], "from 48 to 64")])
def test_a_replicated_channel_must_hold_the_same_images_on_every_host(counts, expect):
    import torch.multiprocessing as mp

    from openic.train.launch import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_replicated_check, args=(r, port, counts, out)) for r in range(len(counts))]
    for p in procs:
        p.start()
    said = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert all(expect in said[r] for r in range(len(counts))), said
    if expect != "ok":
        assert "FullyReplicated" in said[0] and "use ShardedByS3Key" in said[0]


def _pipe_pass(rank: int, port: int, root: str, out) -> None:
    import threading

    import torch.distributed as dist

    from openic.data.sources import Channel
    from openic.formats.recordio import MAGIC_BYTES
    from openic.train.distributed import World
    from openic.train.pipe_feed import PipeFeed

    os.environ["OPENIC_PIPE_WAIT_S"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    host = Path(root) / f"host{rank}"
    (host / "work").mkdir(parents=True)
    (host / "work" / "train.rec").write_bytes(MAGIC_BYTES + bytes(12))
    if rank == 1:  # host 1's next pass comes; host 0's never does
        os.mkfifo(host / "train_1")

        def feed() -> None:
            with open(host / "train_1", "wb") as f:
                f.write(MAGIC_BYTES + bytes(12))
        threading.Thread(target=feed, daemon=True).start()
    try:
        feed = PipeFeed({"train": Channel("train", host / "work" / "train.rec", pipe_fifo=host / "train")},
                        World(rank, 2, 0, 1))
        feed.advance()
        out.put((rank, "no error"))
    except ClientError as e:
        out.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def test_a_pipe_pass_one_host_cannot_read_fails_every_rank_with_its_reason(tmp_path):
    import torch.multiprocessing as mp

    from openic.train.launch import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_pipe_pass, args=(r, port, str(tmp_path), out)) for r in range(2)]
    for p in procs:
        p.start()
    said = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    for rank in (0, 1):  # rank 1 read its pass, then learnt why rank 0 could not
        assert f"{tmp_path / 'host0' / 'train_1'} did not appear within 1 s" in said[rank], said
