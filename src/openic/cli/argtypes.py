"""argparse value types shared by several commands, so a flag spelled in two commands is checked one way."""

from __future__ import annotations

import argparse
from pathlib import Path

from openic.errors import ClientError
from openic.formats.images import check_max_pixels


def boolean(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` (MXNet's tools accept these spellings)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false or 1/0, got {text!r}")


def pixel_limit(text: str) -> int:
    """``--max-image-pixels``: a whole number checked by the same rule as the API's ``max_pixels``."""
    try:
        return check_max_pixels(int(text), "--max-image-pixels")
    except (ValueError, ClientError) as e:
        reason = str(e) if isinstance(e, ClientError) else f"--max-image-pixels must be a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(reason) from None


def location(text: str) -> Path | str:
    """A local path, or an ``s3://`` URI checked and kept as text (``Path`` would fold its ``//``)."""
    if text.startswith("s3://"):
        from openic.storage import parse_s3_uri

        try:
            parse_s3_uri(text)
        except ClientError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    return Path(text)
