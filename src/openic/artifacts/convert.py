"""SageMaker (MXNet) artifact -> openic artifact, so a model trained by the retired algorithm lives on without MXNet.

Serving, transform, the SDK and incremental training read SageMaker's artifacts directly; converting once gives a
file that loads faster (safetensors, no name mapping) and records where it came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from openic.artifacts import mxnet_import
from openic.artifacts.model import archive_in, load_model, save_model
from openic.errors import ClientError
from openic.prep.download import file_digest

log = logging.getLogger(__name__)


def import_mxnet(source: Path, dest: Path, *, epoch: int | None = None) -> Path:
    """Write ``dest`` (an openic ``model.tar.gz``) from SageMaker's ``model.tar.gz`` or an MXNet checkpoint folder.

    Args:
        epoch: 0-based epoch of an earlier ``-NNNN.params`` in the archive (NNNN = epoch + 1); default the last.

    Raises:
        ClientError: ``source`` is not an MXNet image-classification checkpoint, or ``dest`` is ``source``.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists() and source.exists() and dest.resolve() == archive_in(source).resolve():
        raise ClientError(f"the output {dest} is the SageMaker artifact being imported; name another file")
    loaded = load_model(source, checkpoint_epoch=epoch)
    meta = loaded.metadata
    if meta.get("format") != mxnet_import.FORMAT:
        raise ClientError(f"{source} is already an openic artifact ({meta.get('format', 'openic-model')}); "
                          "nothing to import")
    md5 = file_digest(source, "md5") if source.is_file() else None
    origin = {"format": mxnet_import.FORMAT, "source": str(source), "source_md5": md5,
              "symbol": meta["mxnet"]["symbol"],
              "params": meta["checkpoints"].get(str(epoch), meta["mxnet"]["params"]) if epoch is not None
              else meta["mxnet"]["params"]}
    out = save_model(dest.parent, loaded.model, loaded.hyperparameters, epoch=meta["epoch"] if epoch is None
                     else epoch, extra_metadata={"imported_from": origin}, filename=dest.name)
    log.info("imported ResNet-%d (%s, %d classes) from %s to %s", meta["num_layers"],
             ",".join(map(str, meta["image_shape"])), meta["num_classes"], source, out)
    return out
