"""Model artifacts and resume checkpoints: safetensors weights plus JSON, no pickle anywhere.

- :mod:`.model`: ``model.tar.gz`` save/load (what serving and incremental training read);
- :mod:`.resume`: the resumable training checkpoint (``checkpoints/last``);
- :mod:`.state_dict`: unwrap DDP/compile wrappers, clean keys, strict loading and plain weights files with
  readable errors.
"""

from __future__ import annotations

from openic.artifacts.extract import safe_extract
from openic.artifacts.model import (
    MODEL_ARCHIVE,
    LoadedModel,
    checkpoint_name,
    load_model,
    read_model_metadata,
    save_model,
)
from openic.artifacts.resume import load_checkpoint, save_checkpoint
from openic.artifacts.state_dict import clean_state_dict, load_state_strict, load_weights_file, unwrap_model

__all__ = ["MODEL_ARCHIVE", "LoadedModel", "checkpoint_name", "clean_state_dict", "load_checkpoint",
           "load_model", "load_state_strict", "load_weights_file", "read_model_metadata", "safe_extract",
           "save_checkpoint", "save_model", "unwrap_model"]
