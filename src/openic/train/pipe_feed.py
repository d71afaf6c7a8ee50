"""SageMaker's Pipe mode over FIFOs, epoch by epoch: pass ``k`` of a channel reads ``input/data/<channel>_<k>``.

SageMaker opens a new FIFO for every pass over a Pipe channel, once the previous one has been read to its end.
Pass 0 is spooled by each host before its ranks start (:func:`prepare_pipe_channels`); before every later epoch
this process trains, the host's local rank 0 spools the next FIFO beside it (:class:`PipeFeed`). When the stream
is the one already held (the usual case: the same objects in the same order; compared by SHA-256 taken while
copying) the copy is dropped; when any host's stream changed (``ShuffleConfig``, or a ``ShardedByS3Key`` split
that moves between epochs) every rank rebuilds its data from the new copies, so each epoch trains on what
SageMaker streamed for it.

Each channel's work folder keeps ``pipe-state.json``: the next pass to read, the copy in use and its digest. So a
rank restarted by ``--max-restarts`` starts from the copy in use and goes on with the next FIFO, instead of
waiting for one SageMaker already consumed. A FIFO that does not appear, or gets no writer, within
``OPENIC_PIPE_WAIT_S`` seconds (120 by default, each) fails the job on every rank, naming it. A regular file
standing in for ``<channel>_0`` (a local try-out) is a single pass, reused every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from openic.data.sources import Channel
from openic.errors import ClientError
from openic.fileio import atomic_path, atomic_write_text, os_reason
from openic.formats.recordio import MAGIC_BYTES
from openic.prep.download import file_digest
from openic.settings import env_seconds
from openic.train.container import VALID_CHANNELS, ContainerJob, is_fifo
from openic.train.distributed import World, all_reduce_max, broadcast_object, patient_group

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 120.0
WAIT_ENV = "OPENIC_PIPE_WAIT_S"
STATE = "pipe-state.json"
SPOOL_CHUNK = 1 << 20  # bytes per read from a Pipe FIFO
SPOOL_BUDGET_S = 3 * 3600  # how long the other ranks wait for one host's copy of a pass (beside the FIFO wait)


def _open_within(fifo: Path, timeout_s: float) -> BinaryIO:
    """Open ``fifo`` for reading, failing when no writer comes within ``timeout_s`` (the open blocks till then)."""
    box: dict[str, object] = {}

    def opener() -> None:
        try:
            box["file"] = open(fifo, "rb", buffering=0)
        except OSError as e:
            box["error"] = e

    thread = threading.Thread(target=opener, name="pipe-open", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():  # release the blocked open: a writer that connects and leaves at once
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        if isinstance(box.get("file"), io.IOBase):
            box["file"].close()  # type: ignore[union-attr]
        raise ClientError(f"Pipe-mode stream {fifo}: nobody wrote to it within {timeout_s:g} s ({WAIT_ENV} sets "
                          "the wait)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["file"]  # type: ignore[return-value]


def spool_pipe(fifo: Path, dest: Path, open_timeout_s: float | None = None) -> str:
    """Copy a Pipe-mode stream (read once, sequentially, in chunks) into the local RecordIO file ``dest``; returns
    the stream's SHA-256 (hex).

    Opening a FIFO blocks until SageMaker starts writing it (at most ``open_timeout_s`` when given); ``dest``
    appears only once the stream has ended.

    Raises:
        ClientError: the FIFO is missing, gets no writer in time, the stream is empty or is not RecordIO (naming
            the FIFO).
    """
    fifo, dest = Path(fifo), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:  # closed by the with below
        source = open(fifo, "rb", buffering=0) if open_timeout_s is None else _open_within(fifo, open_timeout_s)
    except FileNotFoundError:
        raise ClientError(f"Pipe-mode stream {fifo} does not exist (SageMaker creates <channel>_<epoch> FIFOs "
                          "for channels in Pipe mode)") from None
    except OSError as e:
        raise ClientError(f"cannot open the Pipe-mode stream {fifo}: {os_reason(e)}") from e
    digest, total = hashlib.sha256(), 0
    with source, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := source.read(SPOOL_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            total += len(chunk)
        out.flush()
        if total == 0:
            raise ClientError(f"Unable to start training. Empty Pipe-mode stream {fifo}")
        with open(tmp, "rb") as check:
            if check.read(4) != MAGIC_BYTES:
                raise ClientError(f"{fifo}: Unable to parse record: The Record IO header does not start with the "
                                  "magic number (Pipe mode needs .rec files, stored with RecordWrapperType None)")
    log.info("Spooled %d bytes from %s into %s", total, fifo, dest)
    return digest.hexdigest()


def _read_state(folder: Path) -> dict[str, object] | None:
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("next"), int) and isinstance(state.get("current"), str)
    return state if ok else None


def _write_state(folder: Path, next_pass: int, current: Path, sha256: str) -> None:
    atomic_write_text(folder / STATE, json.dumps({"next": next_pass, "current": current.name, "sha256": sha256}))


def prepare_pipe_channels(job: ContainerJob, work_dir: Path, reuse: bool = False) -> None:
    """Spool every Pipe channel's pass 0 into ``work_dir/<channel>/<channel>.rec`` and point the channel at it
    (with ``pipe_fifo`` set when SageMaker's FIFO feeds it, so that later epochs read the next passes).

    A FIFO can be read only once, so call this once per host, before the ranks start (it forgets the passes of an
    earlier run there); the ranks then call it with ``reuse=True`` and take the copy in use on this host.
    """
    for name in sorted(job.input_modes, key=VALID_CHANNELS.index):
        if job.input_modes[name] != "Pipe":
            continue
        log.info("The channel '%s' is in pipe input mode under %s", name, job.data_dir / name)
        first, folder = job.data_dir / f"{name}_0", Path(work_dir) / name
        channel = replace(job.channels[name], path=folder / f"{name}.rec", lst=None,
                          pipe_fifo=job.data_dir / name if is_fifo(first) else None)
        in_use = _in_use(channel) if reuse else None
        if in_use is not None and in_use.is_file():
            channel = replace(channel, path=in_use)
        else:
            _forget_passes(folder, name)
            _write_state(folder, 1, channel.path, spool_pipe(first, channel.path))
        job.channels[name] = channel


def _forget_passes(folder: Path, name: str) -> None:
    """Remove the state and every copy an earlier run left in a channel's work folder."""
    (folder / STATE).unlink(missing_ok=True)
    if folder.is_dir():
        for old in [*folder.glob(f"{name}-*.rec"), folder / f"{name}.rec"]:
            old.unlink(missing_ok=True)


def pipe_wait_s() -> float:
    return env_seconds(WAIT_ENV, DEFAULT_WAIT_S, 0.1, 3600.0)


def wait_for_fifo(fifo: Path, wait_s: float) -> None:
    """Return once ``fifo`` exists (SageMaker creates it when the previous pass has been read), else fail."""
    deadline = time.monotonic() + wait_s
    while not fifo.exists():
        if time.monotonic() > deadline:
            raise ClientError(f"Pipe-mode stream {fifo} did not appear within {wait_s:g} s (SageMaker creates "
                              f"<channel>_<pass> for every pass once the previous one has been read; {WAIT_ENV} "
                              "sets the wait)")
        time.sleep(0.1)


def _in_use(channel: Channel) -> Path:
    """The copy of ``channel`` its host's state names as in use (the channel's own path without a state)."""
    state = _read_state(channel.path.parent)
    return channel.path.parent / str(state["current"]) if state is not None else channel.path


class PipeFeed:
    """The FIFO-fed channels of one job; :meth:`advance` reads their next passes. Built by every rank at once."""

    def __init__(self, channels: Mapping[str, Channel], world: World) -> None:
        self.world = world
        self.channels = {n: c for n, c in channels.items() if c.pipe_fifo is not None}
        self.wait_s = pipe_wait_s()
        self.group = patient_group(self.wait_s + SPOOL_BUDGET_S)  # the others wait while a host copies a pass

    def _spool_next(self, channel: Channel) -> tuple[Path, bool]:
        """Local rank 0: copy the channel's next pass beside the copy in use; the new copy and whether it differs."""
        folder = channel.path.parent
        state = _read_state(folder) or {"next": 1, "current": channel.path.name,
                                        "sha256": file_digest(channel.path, "sha256")}
        k, current = int(state["next"]), folder / str(state["current"])  # type: ignore[call-overload]
        fifo = channel.pipe_fifo.with_name(f"{channel.pipe_fifo.name}_{k}")  # type: ignore[union-attr]
        wait_for_fifo(fifo, self.wait_s)
        new = folder / f"{channel.name}-{k}.rec"
        digest = spool_pipe(fifo, new, open_timeout_s=self.wait_s)
        same = digest == state.get("sha256")
        if same:
            new.unlink()
            _write_state(folder, k + 1, current, digest)
        else:
            _write_state(folder, k + 1, new, digest)
            current.unlink(missing_ok=True)  # ranks that still map it keep reading it until they rebuild
        log.info("Pipe pass %d of the %s channel: %s", k, channel.name,
                 "the same stream as before" if same else "a new stream")
        return (current if same else new), not same

    def advance(self) -> dict[str, Channel] | None:
        """Read every FIFO channel's next pass (a collective call: every rank, before an epoch after its first).

        Returns the channels to rebuild the data from when any host's stream changed, else None. A pass that
        cannot be read fails every rank with the reason of the highest rank that met it.
        """
        changed, error = 0, None
        if self.world.local_rank == 0:
            try:
                for name, channel in self.channels.items():
                    path, differs = self._spool_next(channel)
                    self.channels[name] = replace(channel, path=path)
                    changed |= differs
            except ClientError as e:
                error = e
        failed = all_reduce_max(self.world.rank + 1 if error is not None else 0, self.group)
        if failed:
            reason = broadcast_object(str(error) if error is not None else None, src=failed - 1, group=self.group)
            raise ClientError(str(reason)) from error
        if not all_reduce_max(changed, self.group):  # every host's streams are the ones held: train on as before
            return None
        if self.world.local_rank != 0:  # this host's first process wrote where the copies in use are now
            self.channels = {n: replace(c, path=_in_use(c)) for n, c in self.channels.items()}
        log.info("Rebuilding the data from the new Pipe streams (%s)",
                 ", ".join(str(c.path) for c in self.channels.values()))
        return dict(self.channels)
