"""Who this process is in a distributed job, and the few collectives training needs (``torch.distributed``).

A launcher (``torchrun``, ``openic train --nproc-per-node``, a Kubernetes PyTorchJob, Slurm through torchrun)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without
them a run is a world of one and every helper here is a no-op, so single-process training takes the same path.

SageMaker's semantics (spec §8): a *host* is one node (``WORLD_SIZE / LOCAL_WORLD_SIZE`` of them);
``mini_batch_size`` is per host, split over the host's processes (as SageMaker splits it over a host's GPUs),
so the global batch is ``mini_batch_size × hosts``. gloo carries the collectives on CPU, NCCL on GPU.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from openic.errors import ClientError

log = logging.getLogger(__name__)

# A collective that waits longer than this for a peer fails instead of hanging (a rank that died is found by the
# launcher sooner: torchrun's agent polls its workers every 0.1 s and stops the rest).
DEFAULT_TIMEOUT_S = 300
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place: global rank and size, rank and size on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, the artifact, tracking and the failure file."""
        return self.rank == 0

    @property
    def hosts(self) -> int:
        return max(1, self.size // self.local_size)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def per_process_batch(self, mini_batch_size: int) -> int:
        """``mini_batch_size`` is per host: each of the host's processes takes an equal part."""
        if mini_batch_size % self.local_size:
            raise ClientError(f"mini_batch_size {mini_batch_size} is per host and must divide evenly over the host's "
                              f"{self.local_size} processes (--nproc-per-node); use a multiple of {self.local_size}")
        return mini_batch_size // self.local_size


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The launcher's environment as a :class:`World`; a partial or inconsistent one is refused, naming the value."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" not in env:
        return World()
    values = {}
    for name in _ENV:
        raw = env.get(name, "1" if name == "LOCAL_WORLD_SIZE" else "0")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ClientError(f"environment variable {name}={raw!r} is not an integer (set by torchrun or your "
                              f"launcher)") from None
    rank, size, local_rank, local_size = (values[n] for n in _ENV)
    if not (1 <= size <= 65536 and 0 <= rank < size and 1 <= local_size <= size and 0 <= local_rank < local_size
            and size % local_size == 0):
        raise ClientError(f"inconsistent distributed environment: RANK={rank} WORLD_SIZE={size} "
                          f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_size}; expected 0 <= RANK < WORLD_SIZE, "
                          f"0 <= LOCAL_RANK < LOCAL_WORLD_SIZE, and WORLD_SIZE a multiple of LOCAL_WORLD_SIZE")
    return World(rank, size, local_rank, local_size)


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process of a GPU host takes the GPU of its local rank."""
    if device.type == "cuda" and world.distributed and device.index is None:
        return torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    return device


@contextmanager
def process_group(world: World, device: torch.device, timeout_s: int = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the job's process group for the ``with`` body (on GPU NCCL, with gloo for CPU tensors; gloo on CPU); a
    world of one joins none."""
    if not world.distributed or dist.is_initialized():
        yield world
        return
    # on GPU, NCCL for CUDA tensors and gloo beside it for the small CPU ones (counts, flags): NCCL has no CPU path
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=timedelta(seconds=timeout_s))
    log.info("Joined the process group: rank %d of %d (%d hosts, %s)", world.rank, world.size, world.hosts, backend)
    try:
        yield world
    except BaseException:
        dist.destroy_process_group()  # no farewell barrier: a peer may be the one that failed
        raise
    _leave_together(world)


def _leave_together(world: World) -> None:
    """Tear the group down only once every rank is done with it, with nothing of ours still holding it.

    A rank that tore gloo down while rank 0 was still writing the artifact, or whose group outlived
    ``destroy_process_group`` into interpreter shutdown (held by an object in a reference cycle), could abort in
    gloo's C++ teardown ("terminate called without an active exception") and fail a finished job. Seen once in
    CI, never reproduced here: the barrier and the collection are precautions against both.
    """
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    log.debug("Rank %d left the process group", world.rank)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over every rank (in place, returned); identity in a world of one."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(value: int, group: object = None) -> int:
    """The largest ``value`` over every rank (of ``group``, default all); itself in a world of one."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t[0])


def broadcast_object(obj: object, src: int = 0, group: object = None) -> object:
    """Rank ``src``'s ``obj`` on every rank (pickled between our own processes only, never from a file)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def patient_group(timeout_s: float) -> object:
    """A gloo group of every rank whose collectives wait up to ``timeout_s`` (the job's own give up after
    ``DEFAULT_TIMEOUT_S``), for steps where one rank works while the others wait: reading a Pipe-mode pass. A
    collective call of every rank; None in a world of one."""
    if not _active():
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s parameters and buffers everywhere (a resumed or pretrained start is rank 0's)."""
    if not _active():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=src)


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm statistics) over ranks: each rank saw its own shard."""
    if not _active():
        return
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf.data, op=dist.ReduceOp.SUM)
                buf.data /= dist.get_world_size()


def average_parameters(model: nn.Module) -> None:
    """Average parameters over ranks (``dist_async``'s synchronisation point), torch's model-averaging utility."""
    if not _active():
        return
    from torch.distributed.algorithms.model_averaging.utils import average_parameters as _average

    _average(list(model.parameters()), dist.group.WORLD)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in order: replicas that trained in lockstep have the same one."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_replicas_agree(model: nn.Module, world: World) -> str:
    """Every rank's parameter digest, compared: diverged replicas are our bug, reported as such."""
    digest = parameter_digest(model)
    if not _active():
        return digest
    digests: list[object] = [None] * world.size
    dist.all_gather_object(digests, digest)
    log.info("Parameter digest on rank %d: %s", world.rank, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"model replicas diverged: parameter digests by rank {digests}")
    return digest


def barrier() -> None:
    if _active():
        dist.barrier()
