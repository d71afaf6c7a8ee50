"""Big read-only state for forked worker processes, without pickling it: registered under a token before the pool
forks, so each child inherits it, and looked up by the token that each task carries.

A token per call, not one module global, so two calls in one process (two threads packing or caching at once)
cannot hand each other's data to their workers.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator

_STATE: dict[int, object] = {}
_LOCK = threading.Lock()
_TOKENS = itertools.count()


@contextlib.contextmanager
def inherited(value: object) -> Iterator[int]:
    """Register ``value`` for the pools created inside this block; yields the token their tasks pass on."""
    with _LOCK:
        token = next(_TOKENS)
        _STATE[token] = value
    try:
        yield token
    finally:
        with _LOCK:
            del _STATE[token]


def lookup(token: int) -> object:
    """What :func:`inherited` registered under ``token`` (in a forked child: as it was at the fork)."""
    return _STATE[token]
