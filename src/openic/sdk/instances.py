"""SageMaker instance types mapped to this machine: ``local``/``local_gpu`` and ``ml.*`` names.

``local`` and CPU ``ml.*`` types train on the CPU; ``local_gpu`` and GPU ``ml.*`` families (p2, p3, p4d, p5,
g4dn, g5, g6, ...) use CUDA when this machine has it, else the CPU with a warning naming the type. Anything else
is refused before any work starts.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping

from openic.errors import ClientError, shown

GPU_FAMILIES = ("p2", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6", "g4dn", "g4ad", "g5", "g5g", "g6",
                "g6e", "gr6", "trn1", "trn2", "inf2")
CPU_FAMILIES = ("t2", "t3", "m4", "m5", "m5d", "m6i", "m6g", "m7i", "c4", "c5", "c5d", "c5n", "c6i", "c6g", "c7i",
                "r5", "r6i", "r7i")
_ML = re.compile(r"^ml\.([a-z0-9]+)\.([0-9]*x?large|medium|small|metal[-a-z0-9]*)$")


def device_for(instance_type: object) -> str:
    """The training device for ``instance_type``: ``cpu``, or ``cuda`` when the type has GPUs and CUDA is here."""
    if instance_type == "local":
        return "cpu"
    if instance_type == "local_gpu":
        return _gpu_or_cpu("local_gpu")
    m = _ML.match(instance_type) if isinstance(instance_type, str) else None
    if m is None or m.group(1) not in GPU_FAMILIES + CPU_FAMILIES:
        raise ClientError(f"instance_type {shown(instance_type)} is not one openic knows: use 'local', 'local_gpu' "
                          f"or a SageMaker ml.* type of the families {', '.join(CPU_FAMILIES + GPU_FAMILIES)} "
                          "(for example ml.p3.2xlarge, ml.c5.xlarge)")
    return _gpu_or_cpu(instance_type) if m.group(1) in GPU_FAMILIES else "cpu"


def _gpu_or_cpu(instance_type: str) -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    warnings.warn(f"instance_type {instance_type!r} has GPUs but this machine has no CUDA device: training on the "
                  "CPU", stacklevel=3)
    return "cpu"


def _wants_gpu(device: str) -> bool:
    """Whether a job with this ``device`` option trains on GPU here ("auto": when CUDA is available)."""
    import torch

    return device != "cpu" and (device != "auto" or torch.cuda.is_available())


def check_gpu_hosts(device: str, instance_count: int, instance_type: object) -> None:
    """``instance_count`` GPU hosts on this machine take one GPU each (NCCL refuses two ranks on one GPU)."""
    import torch

    if instance_count == 1 or not _wants_gpu(device):
        return
    if device not in ("cuda", "auto"):
        raise ClientError(f"device {shown(device)} with instance_count={instance_count}: every host would train on "
                          "that one GPU; leave the device out (openic gives each host its own GPU)")
    count = torch.cuda.device_count()
    if count < instance_count:
        raise ClientError(f"instance_count={instance_count} with instance_type {shown(instance_type)} needs "
                          f"{instance_count} GPUs on this machine (one per host: NCCL cannot place two ranks on one "
                          f"GPU), and {count} are visible; use instance_count <= {max(count, 1)} or a CPU instance "
                          "type")


def host_environment(index: int, device: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of local host ``index``: on GPU it sees only its own GPU (the ``index``-th of those visible,
    so ``CUDA_VISIBLE_DEVICES`` set by the user is honoured), which its one process then uses as ``cuda:0``."""
    out = dict(os.environ if env is None else env)
    if not _wants_gpu(device):
        return out
    if "CUDA_VISIBLE_DEVICES" not in out:
        out["CUDA_VISIBLE_DEVICES"] = str(index)
        return out
    visible = [d.strip() for d in out["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if index < len(visible):  # never more GPUs than the user left visible (check_gpu_hosts counted them)
        out["CUDA_VISIBLE_DEVICES"] = visible[index]
    return out
