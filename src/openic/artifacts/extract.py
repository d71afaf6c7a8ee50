"""Extracting a model archive onto disk, refusing members that would escape the folder or fill the disk.

Reading an artifact (:mod:`openic.artifacts.model`) never extracts; the container does, to lay ``/opt/ml/model``
out as SageMaker does for incremental training.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from openic.errors import ClientError
from openic.formats.tar import MiB, check_member, check_size

EXTRACT_LIMIT = 64 * 1024 * MiB  # safe_extract's default total: ResNet-200 weights (~260 MB) with 250 checkpoints
# what a damaged or truncated archive raises while tarfile reads it (gzip, bzip2 and xz streams)
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def safe_extract(tar_path: Path, dest: Path, *, max_bytes: int = EXTRACT_LIMIT) -> list[Path]:
    """Extract an archive into ``dest``, refusing (before writing anything) members that would escape it.

    Args:
        max_bytes: most bytes the regular members may declare in total (so any one of them, too); the free space
            of ``dest``'s file system bounds them as well, so a small gzip stream cannot fill the disk.

    Returns the extracted paths in archive order.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise FileNotFoundError(f"archive not found: {tar_path}")
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                check_member(m, tar_path, root)
                check_size(m.size, max_bytes, f"{tar_path}: member {m.name!r}")
            total = sum(m.size for m in members if m.isfile())
            check_size(total, max_bytes, f"{tar_path}: the archive")
            free = shutil.disk_usage(root).free
            if total > free:
                raise ClientError(f"{tar_path}: members declare {total:,} bytes but {root} has {free:,} free")
            for m in members:
                check_member(m, tar_path, root)  # again: links extracted so far may redirect paths
                tar.extract(m, root, **extra)
    except READ_ERRORS as e:
        raise ClientError(f"{tar_path}: cannot extract ({e})") from e
    return [Path(root, m.name) for m in members]
