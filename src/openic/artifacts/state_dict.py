"""State-dict helpers shared by model artifacts and resume checkpoints: unwrap, clean keys, strict load.

Weights are always stored from the unwrapped module, so no loader needs to strip ``module.``/``_orig_mod.``.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the file and the missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if own[k].shape != state[k].shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                if keys]
    if problems:
        raise ClientError(f"{source}: weights do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
