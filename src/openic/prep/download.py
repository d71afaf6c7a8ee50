"""Resumable HTTP downloads with a checksum, for the data set commands (stdlib ``urllib`` only).

Bytes go to ``NAME.part``; a later run continues it with an HTTP ``Range`` request (and starts over when the
server ignores the range). Only a file that passed its checksum and ``verify`` check is renamed to ``NAME``, so a
file under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from openic.errors import ClientError, DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # read size, bytes


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks (files here run to hundreds of megabytes)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest``, resumably, and rename it into place only once it is checked.

    Bytes go to ``dest.part``; a re-run continues it with an HTTP ``Range`` request (and starts over if the
    server ignores the range). The finished file must match ``md5`` / ``sha256`` and pass ``verify`` (which
    raises ``DataError``); otherwise it is deleted. An existing ``dest`` is re-used when it matches them (always
    when none is given: it was checked before it got its name).

    Raises:
        ClientError: an HTTP error (naming the URL and status), a network error, or an interrupted transfer.
        DataError: md5/sha256 mismatch (expected vs got) or a failed ``verify``; the bad file is deleted.
    """
    dest = Path(dest)
    expected = [(name, digest.lower()) for name, digest in (("md5", md5), ("sha256", sha256)) if digest]
    if dest.is_file():
        if all(file_digest(dest, name) == digest for name, digest in expected):
            log.info("re-using %s", dest)
            return dest
        log.warning("%s does not match its %s; downloading it again", dest, " / ".join(n for n, _ in expected))
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{dest}.part")
    _fetch(url, part, progress, timeout)
    try:
        for name, digest in expected:
            got = file_digest(part, name)
            if got != digest:
                raise DataError(f"{url}: {name} mismatch: expected {digest}, got {got}; deleted the download, "
                                "run again")
        if verify is not None:
            verify(part)
    except DataError:
        part.unlink()
        raise
    os.replace(part, dest)
    log.info("downloaded %s → %s", url, dest)
    return dest


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Fill ``part`` with the whole body of ``url``, continuing whatever ``part`` already holds."""
    for _ in range(2):  # the second round starts from zero after the server rejected our range
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:  # nothing left after offset: complete, or a stale .part
                if _range_total(e.headers.get("Content-Range")) == offset:
                    return
                log.warning("%s: server rejected resuming at byte %d; starting over", url, offset)
                part.unlink()
                continue
            raise ClientError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise ClientError(f"download failed: {url}: {reason}") from None
        with response:
            status = getattr(response, "status", None)
            if offset and (status != 206 or _range_start(response.headers.get("Content-Range")) != offset):
                log.info("%s: server ignored the range request; starting over", url)
                offset = 0
            _copy(response, url, part, offset, progress)
        return
    raise ClientError(f"download failed: {url}: the server rejects range requests even from byte 0")


def _range_start(header: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    return int(m.group(1)) if m else None


def _range_total(header: str | None) -> int | None:
    m = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", header or "")
    return int(m.group(1)) if m else None


def _copy(response: object, url: str, part: Path, offset: int, progress: bool) -> None:
    length = response.headers.get("Content-Length")  # type: ignore[attr-defined]
    total = offset + int(length) if length is not None and length.isdigit() else None
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=PurePosixPath(url).name,
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    try:
        with bar, open(part, "ab" if offset else "wb") as f:
            while chunk := response.read(_CHUNK):  # type: ignore[attr-defined]
                f.write(chunk)
                bar.update(len(chunk))
    except (OSError, HTTPException) as e:
        got = part.stat().st_size
        raise ClientError(f"download interrupted: {url}: {e!r} after {got} bytes; run again to resume") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise ClientError(f"download interrupted: {url}: got {got} of {total} bytes; run again to resume")
