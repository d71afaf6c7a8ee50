"""``openic train --sagemaker``: SageMaker's training container on top of the job contract.

Reads ``ML_ROOT/input/config`` and channels (:mod:`openic.train.container`), runs the job with its output in
``ML_ROOT/output`` (``failure`` there), checkpoints in ``ML_ROOT/checkpoints`` (a spot restart resumes from them),
and extracts the artifact into ``ML_ROOT/model``. With several hosts in ``resourceconfig.json`` each host starts
its ranks through torchrun's launcher: node rank = this host's index, master = the first host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

from openic.errors import ClientError
from openic.train.container import ContainerJob, load_container_job, publish_model, resolve_master
from openic.train.job import EXIT_CLIENT, EXIT_OK, is_main_process, leave_if_finished_peer, run_job
from openic.train.launch import DEFAULT_PORT, LaunchOptions, launch, under_launcher
from openic.train.pipe_feed import prepare_pipe_channels

log = logging.getLogger(__name__)


def _pipe_dir(job: ContainerJob) -> Path:
    """Where this host spools Pipe channels: a local scratch folder, one per ml-root."""
    key = hashlib.sha256(str(job.ml_root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"openic-pipe-{key}"


def _local_processes() -> int:
    """One process per GPU, as SageMaker's container uses every GPU of a host; one on a CPU host."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _master_port() -> int:
    """torchrun's port on the first host; ``OPENIC_MASTER_PORT`` moves it (SageMaker leaves every port free)."""
    raw = os.environ.get("OPENIC_MASTER_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ClientError(f"OPENIC_MASTER_PORT={raw!r} is not a TCP port (1..65535)")
    return int(raw)


def run_container(ml_root: Path, argv: list[str]) -> int:
    """The container's ``train``: ``argv`` is this command line, re-run on every rank when there are several."""
    try:
        job = load_container_job(ml_root)
        prepare_pipe_channels(job, _pipe_dir(job), reuse=under_launcher())
    except ClientError as e:
        return _client_error(ml_root / "output", e)
    nproc = _local_processes()
    if (job.nnodes > 1 or nproc > 1) and not under_launcher():
        try:
            master = resolve_master(job.master_addr) if job.nnodes > 1 else "127.0.0.1"
            opts = LaunchOptions(nproc_per_node=nproc, nnodes=job.nnodes, node_rank=job.node_rank,
                                 master_addr=master, master_port=_master_port() if job.nnodes > 1 else None)
        except ClientError as e:
            return _client_error(job.output_dir, e)
        log.info("Host %s is node %d of %d (master %s)", job.current_host, job.node_rank, job.nnodes, master)
        return launch(opts, "openic", argv, output_dir=job.output_dir)
    options: dict[str, object] = {"output_dir": job.output_dir, "checkpoint_dir": job.checkpoint_dir}
    if job.label_format:
        options["label_format"] = job.label_format
    result = run_job(job.channels, options, overrides=job.hyperparameters)
    if result.exit_code == EXIT_OK and result.result is not None and is_main_process():
        publish_model(result.result.model_path, job.model_dir)
    return leave_if_finished_peer(result.exit_code)


def _client_error(output_dir: Path, error: ClientError) -> int:
    """A bad ml-root is the user's error, reported where SageMaker looks: ``output/failure``."""
    from openic.fileio import atomic_write_text

    text = f"ClientError: {error}"
    print(text, file=sys.stderr)
    if is_main_process():
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / "failure", text + "\n")
        except (OSError, ClientError):
            pass
    return EXIT_CLIENT
