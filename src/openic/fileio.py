"""Atomic file writes and exclusive locks (stdlib only, so every layer may use them).

A file appears under its final name only once it is complete and flushed to disk; a writer killed midway leaves
at most a hidden ``.NAME.tmp-HOST-PID`` beside it, which a later write removes once that process is gone (never
the temp file of a live process: torchrun ranks and parallel jobs may share a folder). A failed write raises
``OutputError`` naming the file the user asked for, not the temporary name.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openic.errors import ClientError

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_TMP = re.compile(r"\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>[0-9]+)")


class OutputError(ClientError):
    """An output file could not be written (read-only folder, disk full, ...); the message names the file."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sweep_stale(dest: Path) -> None:
    """Delete temp files of ``dest`` left by dead writers on this host; others' in-flight files stay."""
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        m = _TMP.fullmatch(stale.name[len(dest.name) + 1:])
        if m is None or (m["host"] not in (None, _HOST)) or _pid_alive(int(m["pid"])):
            continue
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it over ``dest``, else delete it.

    Raises:
        OutputError: the write, fsync or rename failed (the message names ``dest`` and the OS reason).
    """
    tmp = dest.with_name(f".{dest.name}.tmp-{_HOST}-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as cleanup:
            log.warning("could not remove the temporary file %s: %s", tmp, cleanup)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from e
        raise
    _sweep_stale(dest)
    try:  # make the rename itself durable; not every filesystem allows fsync on a directory
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        log.debug("could not fsync directory %s: %s", dest.parent, e)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\n`` kept as is) to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


class LockedError(ClientError):
    """Another live process holds the lock; the message names the locked path and that process."""


@contextmanager
def exclusive_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an OS lock (``flock``) on ``lock_path`` for the ``with`` body, or fail at once if another process has it.

    The lock dies with its process (``kill -9`` included), so a crashed run never leaves a folder locked; the file
    keeps the holder's host and PID so the refusal can name it. ``what`` names the thing locked in the message.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot create the lock file {lock_path}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock {lock_path}: {e.strerror or e}") from e
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise LockedError(f"{what} is in use by another process ({holder}); wait for it to finish or "
                              f"choose another location") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
