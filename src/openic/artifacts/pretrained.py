"""MXNet's published ImageNet ResNet checkpoints, the weights SageMaker's ``use_pretrained_model=1`` starts from.

``openic pretrained download resnet-18`` fetches ``resnet-18-symbol.json`` and ``resnet-18-0000.params`` (resumable)
into a folder that ``--pretrained`` / ``OPENIC_PRETRAINED_DIR`` then names. MXNet never published checksums for
these files, so each download is checked three ways: against a ``SHA256SUMS`` file the user gives (``--checksums``,
e.g. their organisation's mirror), against the ``SHA256SUMS`` a previous download wrote into the same folder (a
changed file upstream is refused, not silently used), and by reading it: the symbol must be this depth's ResNet and
every array must load into it. Only then does the folder's ``SHA256SUMS`` record the digests.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from openic.artifacts.model import load_mxnet_weights
from openic.errors import ClientError, DataError, shown
from openic.fileio import atomic_path, openic_home
from openic.models.depths import imagenet_depths
from openic.prep.download import download, file_digest

log = logging.getLogger(__name__)

MXNET_MODELS_URL = "http://data.mxnet.io/models/imagenet/resnet"
SUMS = "SHA256SUMS"
IMAGENET_SHAPE = (3, 224, 224)
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](\S+)")


def default_dir() -> Path:
    """``$OPENIC_PRETRAINED_DIR``, else ``$OPENIC_HOME/pretrained``: where downloads go and training looks."""
    return Path(os.environ.get("OPENIC_PRETRAINED_DIR") or openic_home() / "pretrained")


def model_names() -> list[str]:
    return [f"resnet-{d}" for d in imagenet_depths()]


def _depth(name: str) -> int:
    m = re.fullmatch(r"resnet-?(\d+)", name.strip().lower())
    if not m or int(m.group(1)) not in imagenet_depths():
        raise ClientError(f"pretrained model {shown(name)} is not one MXNet published; choose one of "
                          f"{', '.join(model_names())}")
    return int(m.group(1))


def files(name: str, base_url: str = MXNET_MODELS_URL) -> dict[str, str]:
    """``{file name: URL}`` of one model, laid out as data.mxnet.io (``18-layers/resnet-18-0000.params``)."""
    depth = _depth(name)
    prefix = f"resnet-{depth}"
    return {n: f"{base_url.rstrip('/')}/{depth}-layers/{n}" for n in (f"{prefix}-symbol.json", f"{prefix}-0000.params")}


def read_sums(path: Path) -> dict[str, str]:
    """A ``sha256sum`` listing (``HEX  NAME`` per line) as ``{name: hex}``; a malformed line names the file."""
    sums = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(f"checksums file {path} cannot be read: {e}") from e
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _SUM_LINE.fullmatch(line.strip())
        if not m:
            raise ClientError(f"{path}:{i}: {shown(line)} is not a sha256sum line ('<64 hex digits>  <file name>')")
        sums[m.group(2)] = m.group(1).lower()
    return sums


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())), encoding="utf-8")


def download_pretrained(name: str, dest: Path, *, base_url: str = MXNET_MODELS_URL, checksums: Path | None = None,
                        progress: bool = True) -> Path:
    """Fetch one model into ``dest`` (resumable; files already there and verified are kept) and return ``dest``.

    Raises:
        ClientError: unknown model, HTTP or network failure.
        DataError: a file differs from the given or previously recorded sha256, or does not hold this ResNet.
    """
    depth = _depth(name)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pinned = read_sums(dest / SUMS) if (dest / SUMS).is_file() else {}
    given = read_sums(checksums) if checksums is not None else {}
    wanted = files(name, base_url)
    if not given and not all(n in pinned for n in wanted):
        log.warning("no checksums for %s (MXNet published none): its bytes are taken on trust from %s and pinned "
                    "in %s for later downloads; pass --checksums SHA256SUMS to verify them", name, base_url,
                    dest / SUMS)
    for file_name, url in wanted.items():
        expected = given.get(file_name) or pinned.get(file_name)
        if given and file_name not in given:
            raise ClientError(f"checksums file {checksums} has no line for {file_name}")
        download(url, dest / file_name, sha256=expected, progress=progress)
    prefix = f"resnet-{depth}"
    try:
        meta, _ = load_mxnet_weights(dest, IMAGENET_SHAPE, prefix)
        if meta["num_layers"] != depth:
            raise ClientError(f"the symbol describes ResNet-{meta['num_layers']}, not ResNet-{depth}")
    except ClientError as e:
        for file_name in wanted:
            (dest / file_name).unlink(missing_ok=True)
        raise DataError(f"{base_url}: the downloaded {prefix} is not MXNet's ImageNet ResNet-{depth} ({e}); deleted "
                        "it") from None
    _write_sums(dest / SUMS, pinned | {n: file_digest(dest / n, "sha256") for n in wanted})
    log.info("ResNet-%d ImageNet weights (%d classes) ready in %s", depth, meta["num_classes"], dest)
    return dest
