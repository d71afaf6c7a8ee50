"""``s3://`` output and checkpoint locations: the job writes to a local staging folder that is mirrored to S3.

Training writes files (checkpoints renamed into place, metrics appended); S3 stores whole objects. So an S3
``output_dir`` or ``checkpoint_dir`` becomes a staging folder in this host's cache (``OPENIC_S3_CACHE/outputs``),
named after the URI so that a rerun on the same host finds the same one. S3 is the truth: on start the staging
folder's checkpoints are replaced by what the checkpoint prefix holds (SageMaker's spot resume, from any host),
after each epoch's checkpoint the changed files go up, and when the job ends, however it ends, everything does
(``model.tar.gz``, metrics, ``failure``). The output-folder lock is taken on the staging folder, so two jobs on
one URI are refused on one host, and a lease object under each S3 prefix refuses them across hosts
(:mod:`openic.storage.s3lease`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from openic.errors import ClientError
from openic.storage import is_s3
from openic.storage.local import cache_root, staging_dir  # noqa: F401 - staging_dir re-exported

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOCK_PREFIX = ".openic-"  # openic.train.job.LOCK


def _uri(value: str | os.PathLike[str] | None) -> str | None:
    return str(value).rstrip("/") if value is not None and is_s3(value) else None


def _lease(rel: str) -> bool:
    """The local lock and the S3 lease (``openic.storage.s3lease``) are never copied either way: a copied lease
    would overwrite the live one under its holder."""
    return rel.rsplit("/", 1)[-1].startswith(LOCK_PREFIX)


@dataclass(frozen=True)
class RemoteOutputs:
    """Where a job's files go when ``output_dir`` and/or ``checkpoint_dir`` are on S3."""

    output_uri: str | None
    output_dir: Path
    checkpoint_uri: str | None
    checkpoint_dir: Path | None

    @classmethod
    def plan(cls, output_dir: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str] | None) -> RemoteOutputs:
        out_uri, ckpt_uri = _uri(output_dir), _uri(checkpoint_dir)
        out = staging_dir(out_uri) if out_uri else Path(output_dir)
        if ckpt_uri:
            ckpt: Path | None = staging_dir(ckpt_uri)
        else:
            ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        return cls(out_uri, out, ckpt_uri, ckpt)

    @property
    def remote(self) -> bool:
        return bool(self.output_uri or self.checkpoint_uri)

    def _checkpoints(self) -> tuple[str | None, Path]:
        """The checkpoint prefix on S3 (if any) and its local folder."""
        if self.checkpoint_uri:
            return self.checkpoint_uri, self.checkpoint_dir  # type: ignore[return-value]
        local = self.checkpoint_dir if self.checkpoint_dir is not None else self.output_dir / CHECKPOINTS
        return (f"{self.output_uri}/{CHECKPOINTS}" if self.output_uri and self.checkpoint_dir is None else None), local

    def pull(self) -> None:
        """Make the staging checkpoints what S3 holds (called by rank 0 with the output lock held)."""
        from openic.storage import download_dir

        uri, local = self._checkpoints()
        if uri is None:
            return
        if local.exists():
            shutil.rmtree(local)
        fetched = download_dir(uri, local, skip=_lease)
        log.info("%s", f"resuming from {uri}: {fetched} file(s)" if fetched else f"no checkpoints under {uri} yet")

    def push_checkpoints(self) -> None:
        """Upload the checkpoint files that changed (after every epoch's checkpoint)."""
        from openic.storage import upload_dir

        uri, local = self._checkpoints()
        if uri is not None and local.is_dir():
            upload_dir(local, uri, skip=_lease)

    def _not_output(self, rel: str) -> bool:
        """The job's lock file, and ``checkpoints/`` inside the output folder (it went up just before)."""
        return _lease(rel) or (self.checkpoint_dir is None and rel.startswith(CHECKPOINTS + "/"))

    def push_all(self) -> str | None:
        """Upload everything; returns why it failed (the job then fails with it), or None."""
        from openic.storage import upload_dir

        try:
            self.push_checkpoints()
            if self.output_uri and self.output_dir.is_dir():
                upload_dir(self.output_dir, self.output_uri, skip=self._not_output)
        except ClientError as e:
            return f"the job's files could not be uploaded: {e}"
        return None
