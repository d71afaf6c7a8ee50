"""Settings read from the environment, bounded: a bad value is a ``ClientError`` naming the variable, the value and
the valid range, never a silent default (stdlib only, so every layer may use it)."""

from __future__ import annotations

import os

from openic.errors import ClientError


def env_seconds(name: str, default: float, low: float, high: float) -> float:
    """``name`` as seconds in ``[low, high]``; ``default`` when it is unset or empty."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ClientError(f"{name}={raw!r} is not valid: expected seconds from {low:g} to {high:g} (default "
                          f"{default:g})")
    return value
