"""Error types shared by every layer (stdlib only, so the file format may import it).

SageMaker prefixes a job's failure reason with ``ClientError:`` when the user caused it and
``AlgorithmError:`` when the algorithm did; the CLI uses these classes to write the same prefixes.
"""

from __future__ import annotations


class OpenicError(Exception):
    """Base class for errors openic raises on purpose."""


class ClientError(OpenicError, ValueError):
    """Bad input from the user: a file, a value, a flag. The message says what and what is valid."""


class DataError(ClientError):
    """A data file (RecordIO, .idx, .lst, manifest, image) is malformed; the message names it."""


class AlgorithmError(OpenicError, RuntimeError):
    """An internal failure that is not the user's fault."""
