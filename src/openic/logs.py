"""SageMaker-style log lines: ``[MM/DD/YYYY HH:MM:SS INFO 140234] message``.

The training container prefixes every line this way (spec §5); metric regexes written for SageMaker's
CloudWatch logs therefore work on openic's output unchanged. In a distributed job (``WORLD_SIZE`` > 1) every line
starts with ``[rankN]: `` as torchrun's own prefix does, because all ranks of a host share one console.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(asctime)s %(levelname)s %(thread)d] %(message)s"
_DATEFMT = "%m/%d/%Y %H:%M:%S"


def setup_logging(level: int = logging.INFO, stream: object = None) -> None:
    """Send ``openic.*`` loggers to ``stream`` (stdout by default) in SageMaker's format, once."""
    logger = logging.getLogger("openic")
    for handler in list(logger.handlers):
        if getattr(handler, "_openic", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    prefix = f"[rank{os.environ.get('RANK', '0')}]: " if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, _DATEFMT))
    handler._openic = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
