"""State-dict helpers shared by model artifacts and resume checkpoints: unwrap, clean keys, strict load, read.

Weights are always stored from the unwrapped module, so no loader needs to strip ``module.``/``_orig_mod.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from openic.errors import AlgorithmError, ClientError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``_orig_mod.`` (torch.compile) and leading ``module.`` (DDP) from keys; CPU, contiguous tensors."""
    keys = {k: ".".join(p for p in k.split(".") if p != "_orig_mod") for k in state}
    while keys and all(v.startswith("module.") for v in keys.values()):
        keys = {k: v[len("module."):] for k, v in keys.items()}
    if len(set(keys.values())) != len(keys):
        raise AlgorithmError("state dict keys collide after stripping module./_orig_mod. prefixes")
    return {keys[k]: t.detach().to("cpu").contiguous() for k, t in state.items()}


def check_state_fits(own: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str) -> None:
    """Raise a ClientError naming ``source`` and the missing/unexpected/mis-shaped keys unless ``state`` fits ``own``.

    ``own`` may live on the ``meta`` device: only names and shapes are compared, so a model can be checked before
    it is allocated.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if own[k].shape != state[k].shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                if keys]
    if problems:
        raise ClientError(f"{source}: weights do not fit the model: {'; '.join(problems)}")


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the file and the missing/unexpected/mis-shaped keys."""
    check_state_fits(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def load_weights_file(path: Path) -> dict[str, Tensor]:
    """The tensors of a plain safetensors weights file (``checkpoints/best.safetensors``, pretrained weights).

    ``safetensors.torch.load_file`` raises its own SafetensorError on a damaged file; a user who copied or
    truncated the file needs the path and what to do instead.

    Raises:
        FileNotFoundError: no such file.
        ClientError: naming the file when it is not a complete safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ClientError(f"{path}: not a complete safetensors weights file, damaged or truncated? ({e}); "
                          f"write it again or delete it") from e
