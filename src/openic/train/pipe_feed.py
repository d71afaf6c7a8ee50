"""SageMaker's Pipe mode over FIFOs, epoch by epoch: pass ``k`` of a channel reads ``input/data/<channel>_<k>``.

SageMaker opens a new FIFO for every pass over a Pipe channel, once the previous one has been read to its end.
Pass 0 is spooled by each host before its ranks start (:func:`openic.train.container.prepare_pipe_channels`);
before every later epoch this process trains, the host's local rank 0 spools the next FIFO beside it. When the
stream is the one already held (the usual case: the same objects in the same order) the copy is dropped; when any
host's stream changed (``ShuffleConfig``, or a ``ShardedByS3Key`` split that moves between epochs) every rank
rebuilds its data from the new copies, so each epoch trains on what SageMaker streamed for it.

The pass counter is kept in ``<work dir>/<channel>/next-pass``, so a rank restarted by ``--max-restarts`` goes on
with the next FIFO instead of waiting for one SageMaker already consumed. A FIFO that does not appear within
``OPENIC_PIPE_WAIT_S`` seconds (120 by default) fails the job naming it. A regular file standing in for
``<channel>_0`` (a local try-out) is a single pass, reused every epoch.
"""

from __future__ import annotations

import filecmp
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from openic.data.sources import Channel
from openic.errors import ClientError
from openic.fileio import atomic_path, atomic_write_text, os_reason
from openic.formats.recordio import MAGIC_BYTES
from openic.train.container import VALID_CHANNELS, ContainerJob, is_fifo
from openic.train.distributed import World, all_reduce_max

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 120.0
WAIT_ENV = "OPENIC_PIPE_WAIT_S"
STATE = "next-pass"
SPOOL_CHUNK = 1 << 20  # bytes per read from a Pipe FIFO


def spool_pipe(fifo: Path, dest: Path) -> Path:
    """Copy a Pipe-mode stream (read once, sequentially, in chunks) into the local RecordIO file ``dest``.

    Opening a FIFO blocks until SageMaker starts writing it; ``dest`` appears only once the stream has ended.

    Raises:
        ClientError: the FIFO is missing, the stream is empty or is not RecordIO (naming the FIFO).
    """
    fifo, dest = Path(fifo), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        source = open(fifo, "rb", buffering=0)  # closed by the with below
    except FileNotFoundError:
        raise ClientError(f"Pipe-mode stream {fifo} does not exist (SageMaker creates <channel>_<epoch> FIFOs "
                          "for channels in Pipe mode)") from None
    except OSError as e:
        raise ClientError(f"cannot open the Pipe-mode stream {fifo}: {os_reason(e)}") from e
    total = 0
    with source, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := source.read(SPOOL_CHUNK):
            out.write(chunk)
            total += len(chunk)
        out.flush()
        if total == 0:
            raise ClientError(f"Unable to start training. Empty Pipe-mode stream {fifo}")
        with open(tmp, "rb") as check:
            if check.read(4) != MAGIC_BYTES:
                raise ClientError(f"{fifo}: Unable to parse record: The Record IO header does not start with the "
                                  "magic number (Pipe mode needs .rec files, stored with RecordWrapperType None)")
    log.info("Spooled %d bytes from %s into %s", total, fifo, dest)
    return dest


def prepare_pipe_channels(job: ContainerJob, work_dir: Path, reuse: bool = False) -> None:
    """Spool every Pipe channel's pass 0 into ``work_dir/<channel>/<channel>.rec`` and point the channel at it
    (with ``pipe_fifo`` set when SageMaker's FIFO feeds it, so that later epochs read the next passes).

    A FIFO can be read only once, so call this once per host, before the ranks start (it forgets the passes of an
    earlier run there); the ranks then call it with ``reuse=True`` and take this host's newest copy.
    """
    for name in sorted(job.input_modes, key=VALID_CHANNELS.index):
        if job.input_modes[name] != "Pipe":
            continue
        log.info("The channel '%s' is in pipe input mode under %s", name, job.data_dir / name)
        first = job.data_dir / f"{name}_0"
        channel = replace(job.channels[name], path=Path(work_dir) / name / f"{name}.rec", lst=None,
                          pipe_fifo=job.data_dir / name if is_fifo(first) else None)
        if reuse and channel.path.is_file():
            channel = replace(channel, path=_latest(channel))
        else:
            _forget_passes(channel)
            spool_pipe(first, channel.path)
        job.channels[name] = channel


def _forget_passes(channel: Channel) -> None:
    """Remove the pass counter and later passes' copies an earlier run left in this channel's work folder."""
    folder = channel.path.parent
    (folder / STATE).unlink(missing_ok=True)
    if folder.is_dir():
        for old in folder.glob(f"{channel.name}-*.rec"):
            old.unlink(missing_ok=True)


def pipe_wait_s() -> float:
    raw = os.environ.get(WAIT_ENV, "")
    try:
        wait = float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        wait = -1.0
    if not 0.0 < wait <= 3600.0:
        raise ClientError(f"{WAIT_ENV}={raw!r} is not valid: expected seconds above 0, up to 3600 (default "
                          f"{DEFAULT_WAIT_S:g})")
    return wait


def wait_for_fifo(fifo: Path, wait_s: float) -> None:
    """Return once ``fifo`` exists (SageMaker creates it when the previous pass has been read), else fail."""
    deadline = time.monotonic() + wait_s
    while not fifo.exists():
        if time.monotonic() > deadline:
            raise ClientError(f"Pipe-mode stream {fifo} did not appear within {wait_s:g} s (SageMaker creates "
                              f"<channel>_<pass> for every pass once the previous one has been read; {WAIT_ENV} "
                              "sets the wait)")
        time.sleep(0.1)


def _next_pass(channel: Channel) -> int:
    """The FIFO this host reads next for ``channel`` (pass 0 was spooled before the ranks started)."""
    try:
        return max(1, int((channel.path.parent / STATE).read_text(encoding="ascii")))
    except (OSError, ValueError):
        return 1


def _latest(channel: Channel) -> Path:
    """This host's newest copy of ``channel``: the one of the pass before :func:`_next_pass`."""
    k = _next_pass(channel) - 1
    return channel.path.with_name(f"{channel.name}-{k}.rec") if k >= 1 else channel.path


class PipeFeed:
    """The FIFO-fed channels of one job and the next pass to read for each."""

    def __init__(self, channels: Mapping[str, Channel], world: World) -> None:
        self.world = world
        self.channels = {n: c for n, c in channels.items() if c.pipe_fifo is not None}
        self.wait_s = pipe_wait_s() if self.channels else DEFAULT_WAIT_S

    def __bool__(self) -> bool:
        return bool(self.channels)

    def advance(self) -> dict[str, Channel] | None:
        """Read every FIFO channel's next pass (a collective call: every rank, before an epoch after its first).

        Returns the channels to rebuild the data from when any host's stream changed, else None.
        """
        changed, spooled = 0, {}
        if self.world.local_rank == 0:
            for name, channel in self.channels.items():
                k = _next_pass(channel)
                fifo = channel.pipe_fifo.with_name(f"{channel.pipe_fifo.name}_{k}")  # type: ignore[union-attr]
                wait_for_fifo(fifo, self.wait_s)
                new = spool_pipe(fifo, channel.path.with_name(f"{name}-{k}.rec"))
                atomic_write_text(channel.path.parent / STATE, f"{k + 1}\n")
                same = filecmp.cmp(channel.path, new, shallow=False)
                log.info("Pipe pass %d of the %s channel: %s", k, name,
                         "the same stream as before" if same else "a new stream")
                changed |= not same
                spooled[name] = new
        if not all_reduce_max(int(changed)):  # every host's streams are the ones held: train on as before
            for new in spooled.values():
                new.unlink(missing_ok=True)
            return None
        old = {n: c.path for n, c in self.channels.items()}
        self.channels = {n: replace(c, path=_latest(c)) for n, c in self.channels.items()}
        if self.world.local_rank == 0:  # the copy before, unless it is pass 0's (a restarted rank starts from it)
            for name, path in old.items():
                if path != self.channels[name].path and path.name != f"{name}.rec":
                    path.unlink(missing_ok=True)
        log.info("Rebuilding the training data from the new Pipe streams (%s)",
                 ", ".join(str(c.path) for c in self.channels.values()))
        return dict(self.channels)
