"""Run state that survives a crash: the per-epoch checkpoint, the best weights, early stopping.

Layout under the output directory (every file written to a temporary name, then renamed):
- ``checkpoints/last``: model + optimizer + run state after the last completed epoch (resume point);
- ``checkpoints/best.safetensors``: the best-validation weights (when ``checkpoint_frequency`` is unset);
- ``checkpoints/image-classification-%04d.safetensors``: every ``checkpoint_frequency``-th epoch (number = epoch+1,
  SageMaker's naming), all of which go into ``model.tar.gz``.
Best means strictly better validation accuracy (equal does not replace, as observed in SageMaker's logs). Early
stopping counts an epoch as improving when ``(acc - best) / best > early_stopping_tolerance`` (so at tolerance 0 a
tie is no improvement); it may stop once ``early_stopping_min_epochs`` epochs have run and
``early_stopping_patience`` epochs in a row did not improve.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from openic.artifacts import MODEL_ARCHIVE, checkpoint_name, save_model
from openic.artifacts.resume import load_checkpoint, save_checkpoint
from openic.artifacts.state_dict import clean_state_dict, load_state_strict, load_weights_file, unwrap_model
from openic.errors import ClientError
from openic.fileio import atomic_path
from openic.hyperparams import HyperParameters

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass
class RunState:
    epochs_done: int = 0
    num_update: int = 0
    best_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    saved_epochs: list[int] = field(default_factory=list)
    stopped_early: bool = False  # a resumed run has nothing left to do
    history: list[dict[str, float]] = field(default_factory=list)


def _save_weights(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(clean_state_dict(unwrap_model(model).state_dict()), str(tmp))


def improved(best: float | None, accuracy: float, tolerance: float) -> bool:
    """Early stopping's test: the relative gain ``(acc - best) / best`` exceeds ``tolerance`` (a tie never does)."""
    return best is None or (accuracy - best) / max(best, 1e-12) > tolerance


def should_stop_early(hp: HyperParameters, run: RunState, epoch: int) -> bool:
    """Stop after ``epoch`` when early stopping is on, the minimum epochs ran, and patience ran out."""
    return (hp.early_stopping and epoch + 1 >= hp.early_stopping_min_epochs
            and run.epochs_without_improvement >= hp.early_stopping_patience and epoch + 1 < hp.epochs)


class Checkpointer:
    """Where a run's weights go. ``writer=False`` (every rank but 0 of a distributed job) keeps the bookkeeping
    and writes nothing; ``checkpoint_dir`` moves ``checkpoints/`` elsewhere (SageMaker's ``/opt/ml/checkpoints``)."""

    def __init__(self, out_dir: Path, hp: HyperParameters, *, writer: bool = True,
                 checkpoint_dir: Path | None = None, after_save: Callable[[], None] | None = None) -> None:
        self.out, self.hp, self.writer, self.after_save = out_dir, hp, writer, after_save
        self.dir = checkpoint_dir if checkpoint_dir is not None else out_dir / CHECKPOINTS
        self.last = self.dir / "last"
        self.best = self.dir / "best.safetensors"

    def periodic(self, epoch: int) -> Path:
        return self.dir / checkpoint_name(epoch)

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None) -> RunState:
        """Continue after the last completed epoch if this output directory holds a checkpoint of the same run."""
        if not self.last.exists():
            return RunState()
        state = load_checkpoint(self.last, model=model, optimizer=optimizer, scaler=scaler,
                                check_state=self._same_run)
        run = RunState(**state["run"])
        log.info("Resuming from %s: %d epochs already done", self.last, run.epochs_done)
        return run

    def _same_run(self, state: dict) -> None:
        saved_hp = state.get("hyperparameters") or {}
        ours = self.hp.to_dict()
        if saved_hp != ours:
            changed = sorted(k for k in set(saved_hp) | set(ours) if saved_hp.get(k) != ours.get(k))
            raise ClientError(f"{self.out} holds a checkpoint of a run with other hyperparameters (differing: "
                              f"{', '.join(changed)}); use a new --output-dir, or --no-resume to start over")

    def save_best(self, model: nn.Module, accuracy: float) -> None:
        """Keep the weights of a new best epoch (only when ``checkpoint_frequency`` is unset, as SageMaker)."""
        if self.hp.checkpoint_frequency is None and self.writer:
            log.info("Storing the best model with validation accuracy: %f", accuracy)
            _save_weights(model, self.best)
            log.info('Saved checkpoint to "%s"', self.best)

    def save_periodic(self, run: RunState, epoch: int, model: nn.Module) -> None:
        """Every ``checkpoint_frequency``-th epoch's weights, all kept for ``model.tar.gz``."""
        freq = self.hp.checkpoint_frequency
        if freq is not None and (epoch + 1) % freq == 0:
            run.saved_epochs.append(epoch)
            if not self.writer:
                return
            _save_weights(model, self.periodic(epoch))
            log.info('Saved checkpoint to "%s"', self.periodic(epoch))

    def save(self, run: RunState, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None) -> None:
        if not self.writer:
            return
        state = {"hyperparameters": self.hp.to_dict(), "run": json.loads(json.dumps(asdict(run)))}
        save_checkpoint(self.last, model=unwrap_model(model), optimizer=optimizer, scaler=scaler, state=state)
        if self.after_save is not None:  # e.g. mirror the checkpoints to S3 (openic.train.remote)
            self.after_save()

    def write_model(self, run: RunState, model: nn.Module, class_names: list[str] | None) -> Path:
        """``model.tar.gz``: the best epoch's weights, or the last ones plus every periodic checkpoint."""
        if not self.writer:
            return self.out / MODEL_ARCHIVE
        model = unwrap_model(model)
        checkpoints = None
        epoch = run.epochs_done - 1
        if self.hp.checkpoint_frequency is None and self.best.exists():
            load_state_strict(model, load_weights_file(self.best), str(self.best))
            epoch = run.best_epoch if run.best_epoch is not None else epoch
        elif self.hp.checkpoint_frequency is not None:
            checkpoints = {e: self.periodic(e) for e in run.saved_epochs}  # copied into the tar one at a time
        metrics = {"best_validation_accuracy": run.best_accuracy} if run.best_accuracy is not None else None
        return save_model(self.out, model, self.hp, epoch=epoch, class_names=class_names, checkpoints=checkpoints,
                          metrics=metrics)
