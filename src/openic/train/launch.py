"""Start a distributed training job on torchrun's engine (``torch.distributed.run`` / torchelastic).

``openic train --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]`` and the SDK's
``Estimator(instance_count=N)`` come here: the options are handed to torchrun's own argument parser and launcher,
which start ``python -m MODULE ARGS`` once per local rank with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/... set,
watch them, stop the rest when one dies, and restart them all up to ``--max-restarts`` times (each restart resumes
from the last checkpoint). Under ``torchrun`` itself (or any launcher that sets its environment) nothing here runs.

When a rank fails, the launcher's report names it; this module turns that report into one line (rank, host, exit
code or signal) and, on the node of rank 0, into ``OUTPUT_DIR/failure`` when the job left none of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from openic.errors import ClientError, shown
from openic.fileio import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_PORT = 29500  # torchrun's
MONITOR_INTERVAL_S = 0.2  # how often the launcher checks that every rank is alive


@dataclass(frozen=True)
class LaunchOptions:
    """torchrun's options, bounded: a typo'd process count must not fork thousands of processes."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    max_restarts: int = 0

    def __post_init__(self) -> None:
        _bounded("--nproc-per-node", self.nproc_per_node, 1, 256)
        _bounded("--nnodes", self.nnodes, 1, 4096)
        _bounded("--node-rank", self.node_rank, 0, self.nnodes - 1)
        _bounded("--max-restarts", self.max_restarts, 0, 100)
        if self.master_port is not None:
            _bounded("--master-port", self.master_port, 1, 65535)
        if not self.master_addr or any(c.isspace() for c in self.master_addr):
            raise ClientError(f"--master-addr {self.master_addr!r} is not a host name or address")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1


def _bounded(flag: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ClientError(f"{flag} {shown(value)} is not valid: expected an integer from {low} to {high}")


def under_launcher() -> bool:
    """torchrun (or a launcher that sets its environment) already started this process as one rank."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_argv(opts: LaunchOptions, module: str, args: list[str], port: int) -> list[str]:
    """The command line torchrun would be given for this job (also what the docs show)."""
    return ["--nnodes", str(opts.nnodes), "--nproc-per-node", str(opts.nproc_per_node),
            "--node-rank", str(opts.node_rank), "--master-addr", opts.master_addr, "--master-port", str(port),
            "--rdzv-backend", "static", "--max-restarts", str(opts.max_restarts),
            "--monitor-interval", str(MONITOR_INTERVAL_S), "-m", module, *args]


def launch(opts: LaunchOptions, module: str, args: list[str], output_dir: Path | None = None) -> int:
    """Run ``python -m module args`` on every local rank under torchrun's launcher; the job's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    port = opts.master_port or (free_port() if opts.nnodes == 1 else DEFAULT_PORT)
    parsed = get_args_parser().parse_args(torchrun_argv(opts, module, args, port))
    config, entry, entry_args = config_from_args(parsed)
    log.info("Launching %d process(es) on node %d of %d (master %s:%d)", opts.nproc_per_node, opts.node_rank,
             opts.nnodes, opts.master_addr, port)
    try:
        elastic_launch(config, entry)(*entry_args)
    except ChildFailedError as e:
        return _report(e, opts, output_dir)
    return 0


def _root_cause_first(item: tuple[int, object]) -> tuple[bool, bool, float, int]:
    """Order failures so the cause comes first: not one the launcher stopped (SIGTERM), a crash by signal before
    an error exit (a peer's "connection closed" follows a crash), then the earliest."""
    rank, failure = item
    code = int(getattr(failure, "exitcode", 1) or 1)
    stopped = code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    return stopped, code >= 0, float(getattr(failure, "timestamp", 0) or 0), rank


def _report(error: object, opts: LaunchOptions, output_dir: Path | None) -> int:
    """One line naming the rank that failed first; the job's own failure file wins when rank 0 wrote one."""
    failures = getattr(error, "failures", {}) or {}
    if not failures:
        print(f"AlgorithmError: distributed training failed: {error}", file=sys.stderr)
        return 1
    rank, failure = min(failures.items(), key=_root_cause_first)
    code = int(getattr(failure, "exitcode", 1) or 1)
    host = getattr(failure, "hostname", "") or socket.gethostname()
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exited with code {code}"
    restarts = f" after {opts.max_restarts} restart(s)" if opts.max_restarts else ""
    text = (f"AlgorithmError: rank {rank} (on {host}) {how}{restarts}; the other ranks were stopped. Run the same "
            f"command again to resume from the last completed epoch.")
    failure_file = output_dir / "failure" if output_dir is not None else None
    if failure_file is not None and opts.node_rank == 0 and output_dir.is_dir():
        own = failure_file.read_text(encoding="utf-8") if failure_file.exists() else ""
        if own and rank == 0:  # rank 0 failed first and said why (a ClientError, say): its reason stands
            text = own.splitlines()[0]
        else:
            atomic_write_text(failure_file, text + (f"\n\nrank 0 then reported:\n{own}" if own else "\n"))
    print(text, file=sys.stderr)
    return 2 if code == 2 else 1
