"""Error types shared by every layer (stdlib only, so the file format may import it).

SageMaker prefixes a job's failure reason with ``ClientError:`` when the user caused it and
``AlgorithmError:`` when the algorithm did; the CLI uses these classes to write the same prefixes.
"""

from __future__ import annotations

from collections.abc import Callable


class OpenicError(Exception):
    """Base class for errors openic raises on purpose."""


class ClientError(OpenicError, ValueError):
    """Bad input from the user: a file, a value, a flag. The message says what and what is valid."""


class DataError(ClientError):
    """A data file (RecordIO, .idx, .lst, manifest, image) is malformed; the message names it."""


class AlgorithmError(OpenicError, RuntimeError):
    """An internal failure that is not the user's fault."""


def shown(value: object, limit: int = 40, show: Callable[[object], str] = repr) -> str:
    """``value`` as an error message shows it: at most ``limit`` characters and ``...``, and never raising.

    A hostile value can be megabytes long, nested past the interpreter's stack, or an int too long for ``str``
    (Python refuses more than 4300 digits); the message must still come out, readable.
    """
    try:
        text = show(value)
    except (ValueError, RecursionError):
        if isinstance(value, int):
            return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit + 3 else text[:limit] + "..."
