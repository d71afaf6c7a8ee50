"""Atomic file writes and one-writer locks (stdlib only, so every layer may use them).

A file appears under its final name only once it is complete and flushed to disk; a writer killed midway leaves
at most a hidden ``.NAME.tmp-HOST-PID`` beside it, which a later write removes once that process is gone (never
the temp file of a live process: torchrun ranks and parallel jobs may share a folder). A failed write raises
``OutputError`` naming the file the user asked for, not the temporary name.
"""

from __future__ import annotations

import contextlib
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
        replace_durably(tmp, dest)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as cleanup:
            log.warning("could not remove the temporary file %s: %s", tmp, cleanup)
        # an error about another file (one the body was reading) keeps its own message, which names that file
        if isinstance(e, OSError) and e.filename in (None, str(tmp), str(dest), os.fspath(tmp), os.fspath(dest)):
            raise OutputError(f"cannot write {dest}: {os_reason(e)}") from e
        raise
    _sweep_stale(dest)


def replace_durably(tmp: Path, dest: Path) -> None:
    """fsync ``tmp``, rename it over ``dest``, then fsync the folder so the rename itself survives a power cut."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    try:  # not every filesystem allows fsync on a directory
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
    """Another live process holds the lock; the message names the locked thing and that process."""


def os_reason(e: OSError) -> str:
    """``[Errno 28] No space left on device``, without the (temporary) file name ``str(e)`` would add."""
    return f"[Errno {e.errno}] {e.strerror}" if e.errno and e.strerror else str(e)


class FileLock:
    """An exclusive ``flock`` on a hidden lock file holding our PID, taken without waiting, for one writer at a time.

    The kernel drops the lock when its process dies (``kill -9`` included), so a crash never leaves anything
    locked. The file is deleted while still locked on release, and a lock is only kept on a file still under its
    name, so a process that opened the file just before it was deleted cannot hold a lock nobody else sees. On a
    file system without locks the writer goes on unprotected, with a warning. ``what`` starts the refusal message.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.fd = Path(path), None
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"{what}: cannot create the lock file {self.path}: {os_reason(e)}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # e.g. a file system without locks
                    log.warning("cannot lock %s (%s): going on without protection from a second writer", self.path,
                                os_reason(e))
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                    return
                raise LockedError(f"{what}: another process (PID {holder}) is using it; wait for it to finish or "
                                  f"stop it (lock file {self.path})") from None
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
            else:  # its holder deleted it between our open and our flock: lock the new file
                os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def openic_home() -> Path:
    """Where openic keeps per-user state (jobs, endpoint logs, pretrained weights): ``$OPENIC_HOME`` or ~/.openic."""
    return Path(os.environ.get("OPENIC_HOME") or Path.home() / ".openic")
