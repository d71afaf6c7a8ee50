"""Atomic file writes (stdlib only, so every layer may use them): nothing is lost, or left half-written, on a crash.

A file appears under its final name only once it is complete and flushed to disk; a writer killed midway leaves
at most a hidden ``.NAME.tmp-PID`` beside it, which the next successful write removes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it over ``dest``, else delete it."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
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
