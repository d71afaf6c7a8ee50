"""Tar archives from users, read or extracted without trusting them: one member check, one bounded reader.

Model artifacts (``model.tar.gz``) and downloaded data sets (CIFAR-10's python tarball) come from outside, so a
member may try to write outside the destination (``../x``, ``/etc/x``, ``C:x``, a link pointing away), be a device
or FIFO, or declare gigabytes that a small gzip stream inflates to. :func:`check_member` is the one rule for the
first kind and :func:`read_member` bounds the second before a byte is read. No torch here.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from openic.errors import DataError

MiB = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def member_name(member: tarfile.TarInfo) -> str:
    """The member's path as archives spell it without the leading ``./`` (``tar czf x.tar.gz -C dir .``)."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def check_member(member: tarfile.TarInfo, archive: str | os.PathLike[str], root: str | None = None) -> None:
    """Refuse a member that could reach outside the destination; the message names the archive and the member.

    Args:
        archive: the archive's path, for the message.
        root: the real path of the folder being extracted into: links are allowed when they resolve inside it
            (checked against the disk, so call again right before extracting each member: links extracted so far
            may redirect a path). ``None`` when reading in memory: then every link is refused, since nothing
            on disk can say where it leads.

    Raises:
        DataError: ``{archive}: refusing tar member 'name': why``.
    """
    name = member.name

    def refuse(why: str) -> DataError:
        return DataError(f"{archive}: refusing tar member {name!r}: {why}")

    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise refuse("device files, FIFOs and other special files are not allowed")
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or _DRIVE.match(name):
        raise refuse("absolute path; members must be relative to the archive's folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise refuse("'..' in the path points outside the archive's folder")
    if root is None:
        if member.issym() or member.islnk():
            raise refuse(f"a link (to {member.linkname!r}); links are not allowed in this archive")
        return
    if not _within(root, os.path.realpath(os.path.join(root, name))):
        raise refuse("resolves outside the destination")
    if member.issym() or member.islnk():
        if os.path.isabs(member.linkname) or _DRIVE.match(member.linkname):
            raise refuse(f"link to absolute path {member.linkname!r}")
        base = os.path.join(root, os.path.dirname(name)) if member.issym() else root
        if not _within(root, os.path.realpath(os.path.join(base, member.linkname))):
            raise refuse(f"link target {member.linkname!r} is outside the destination")


def check_size(size: int, limit: int, where: str) -> None:
    """Refuse a declared size over ``limit`` before anything is read (``where`` names the archive and member)."""
    if size > limit:
        raise DataError(f"{where} declares {size:,} bytes, more than the {limit:,} allowed; refusing to read it")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str | os.PathLike[str], limit: int) -> bytes:
    """Bytes of a regular member, at most ``limit`` of them, refused by its header's declared size before reading.

    Memory stays at the declared size: a gzip bomb or a sparse member declaring gigabytes is refused from its
    header, and a stream that delivers more or fewer bytes than declared is refused too.

    Raises:
        DataError: naming the archive and the member: over the limit, not a regular file, or short/long data.
    """
    where = f"{archive}: member {member.name!r}"
    if not member.isfile():
        raise DataError(f"{where} is not a regular file")
    check_size(member.size, limit, where)
    f = tar.extractfile(member)
    assert f is not None  # isfile() members always have data
    with f:
        data = f.read(member.size + 1)
    if len(data) != member.size:
        raise DataError(f"{where} declares {member.size:,} bytes but holds {len(data):,} (damaged archive?)")
    return data


def read_file(path: Path, limit: int) -> bytes:
    """A plain file's bytes, at most ``limit``: the on-disk twin of :func:`read_member` for extracted artifacts."""
    check_size(path.stat().st_size, limit, str(path))
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    check_size(len(data), limit, str(path))  # the file grew after stat
    return data
