"""SageMaker-style log lines: ``[MM/DD/YYYY HH:MM:SS INFO 140234] message``.

The training container prefixes every line this way (spec §5); metric regexes written for SageMaker's
CloudWatch logs therefore work on openic's output unchanged.
"""

from __future__ import annotations

import logging
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
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    handler._openic = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
