"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit`` — a plain ``for epoch`` loop.

``fit`` reads top to bottom: set up the model and optimizer, resume from the last checkpoint if the output
directory has one, then open the data (so cheap mistakes fail before slow decoding); per epoch train →
re-estimate BatchNorm statistics → validate → log SageMaker's lines → keep the best / periodic weights →
write a checkpoint atomically → maybe stop early; finally write ``model.tar.gz``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from openic.data.sources import Channel, find_class_names
from openic.data.transforms import to_float_input
from openic.hyperparams import HyperParameters
from openic.models.precision import native_bf16
from openic.tracking import FileTracker, MultiTracker, NullTracker, Tracker
from openic.train import distributed, optim
from openic.train.config import TrainConfig
from openic.train.metrics import Accuracy, LossFn, make_loss, prefixed
from openic.train.run_state import Checkpointer, RunState, improved, should_stop_early
from openic.train.sagemaker_log import log_configuration, log_epoch_train
from openic.train.setup import DataBundle, build_data, build_model, pick_device, progress_enabled

log = logging.getLogger(__name__)

ASYNC_AVERAGING_PERIOD = 4  # dist_async: steps between weight averages across ranks


@dataclass
class Step:
    """What one training step needs besides the batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    device: torch.device
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler | None
    after_step: Callable[[], None] | None = None  # dist_async: periodic model averaging


def _autocast(hp: HyperParameters, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """float16 = mixed precision: fp16 + loss scaling on CUDA, bf16 autocast on CPU (no scaling needed)."""
    if hp.precision_dtype != "float16":
        return contextlib.nullcontext(), False
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16), True
    if not native_bf16():
        log.warning("precision_dtype=float16 trains in bfloat16 on a CPU, and this one has no native bfloat16 (AMX "
                    "or AVX-512 BF16): it is emulated, ~20x slower than float32 on a 2-core AVX2 EPYC; use "
                    "precision_dtype=float32 here")
    return torch.autocast("cpu", dtype=torch.bfloat16), False


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = to_float_input(x, device, channels_last=True)
    return x, y.to(device, non_blocking=True)


def train_one_epoch(step: Step, batches, hp: HyperParameters, run: RunState, epoch: int, *,
                    log_every: int, epoch_steps: int, tracker: Tracker, progress: bool,
                    keep: deque | None = None) -> dict[str, float]:
    """One pass over the training stream; logs MXNet's Speedometer line every ``log_every`` batches.

    ``keep`` (a bounded deque) receives the last input batches, for re-estimating BatchNorm statistics.
    """
    step.model.train()
    epoch_acc = Accuracy(step.device, bool(hp.multi_label), hp.top_k)
    window = Accuracy(step.device, bool(hp.multi_label), hp.top_k)
    tic = time.perf_counter()
    window_samples = 0
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, total=len(batches), desc=f"epoch {epoch}", unit="batch", leave=False)
    for nbatch, (x, y) in enumerate(iterator, 1):
        lr = optim.learning_rate_at(hp, run.num_update, epoch_steps)
        optim.set_learning_rate(step.optimizer, lr)
        x, y = _to_device(x, y, step.device)
        with step.autocast:
            logits = step.model(x)
        loss = step.loss_fn(logits, y)
        step.optimizer.zero_grad(set_to_none=True)
        if step.scaler is not None:
            step.scaler.scale(loss).backward()
            step.scaler.step(step.optimizer)
            step.scaler.update()
        else:
            loss.backward()
            step.optimizer.step()
        if step.after_step is not None:
            step.after_step()
        run.num_update += 1
        if keep is not None:
            keep.append(x)
        epoch_acc.update(logits, y, loss)
        window.update(logits, y, loss)
        window_samples += x.shape[0]
        if nbatch % log_every == 0:
            speed = window_samples / max(time.perf_counter() - tic, 1e-9)
            values = window.result()
            metrics = "\t".join(f"{k}={v:f}" for k, v in values.items() if k != "loss")
            log.info("Epoch[%d] Batch [%d]\tSpeed: %.3f samples/sec\t%s", epoch, nbatch, speed, metrics)
            tracker.log_metrics(prefixed("train", values) | {
                "learning_rate": lr, "samples_per_sec": speed}, step=run.num_update, epoch=epoch)
            window.reset()
            window_samples, tic = 0, time.perf_counter()
    return epoch_acc.merge(distributed.all_reduce_sum).result()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor],
                          autocast: contextlib.AbstractContextManager) -> None:
    """Re-estimate every BatchNorm's running statistics from ``batches`` with the current weights ("precise BN").

    With few updates per epoch and a high learning rate, MXNet-style running averages lag the weights badly (the
    fixtures README shows a 20-step model saturating on one class); averaging fresh statistics over the epoch's
    last batches makes validation accuracy, and the stored model, reflect the weights actually trained.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        for x in batches:
            with autocast:
                model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, batches, hp: HyperParameters, device: torch.device,
             autocast: contextlib.AbstractContextManager, loss_fn: LossFn) -> dict[str, float]:
    """Accuracy (and top-k, loss) over the whole validation stream, centre-cropped, no augmentation."""
    model.eval()
    acc = Accuracy(device, bool(hp.multi_label), hp.top_k)
    for x, y in batches:
        x, y = _to_device(x, y, device)
        with autocast:
            logits = model(x)
        acc.update(logits, y, loss_fn(logits, y))
    return acc.merge(distributed.all_reduce_sum).result()


@dataclass
class TrainResult:
    output_dir: Path
    model_path: Path
    epochs_run: int
    best_epoch: int | None
    best_validation_accuracy: float | None
    history: list[dict[str, float]]


def fit(hp: HyperParameters, channels: dict[str, Channel], config: TrainConfig,
        tracker: Tracker | None = None, on_checkpoint: Callable[[], None] | None = None) -> TrainResult:
    """Train as SageMaker's image-classification algorithm would, writing everything under ``config.output_dir``.

    Order: everything that can fail cheaply (device, model channel, pretrained weights, checkpoint of another run)
    is checked before the data sets are decoded. Under a distributed launcher every rank runs this; rank 0 alone
    writes (checkpoints, metrics, the artifact) and the others follow its resume point.
    """
    world = distributed.world_from_env()
    world.per_process_batch(hp.mini_batch_size)  # a batch that does not split over the host fails here, cheaply
    _set_threads(config, world)
    device = distributed.device_for(world, pick_device(config.device))
    with distributed.process_group(world, device):
        return _fit(hp, channels, config, tracker, world, device, on_checkpoint)


def _set_threads(config: TrainConfig, world: distributed.World) -> None:
    """As asked, else share the cores among a host's processes (oversubscribed torch threads run many times
    slower; torchrun's own default is one thread each)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.local_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))


def _fit(hp: HyperParameters, channels: dict[str, Channel], config: TrainConfig, tracker: Tracker | None,
         world: distributed.World, device: torch.device,
         on_checkpoint: Callable[[], None] | None = None) -> TrainResult:
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if world.is_main:
        log_configuration(hp)
    model = build_model(hp, channels, config).to(device).to(memory_format=torch.channels_last)
    optimizer = optim.build_optimizer(hp, model)
    autocast, use_scaler = _autocast(hp, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    ckpt = Checkpointer(out, hp, writer=world.is_main, checkpoint_dir=config.checkpoint_dir,
                        after_save=on_checkpoint)
    run = ckpt.resume(model, optimizer, scaler) if config.resume and world.is_main else RunState()
    if world.distributed:
        run = _follow_rank0(model, optimizer, run)
    class_names = find_class_names(channels["train"], hp.num_classes)
    if run.stopped_early or run.epochs_done >= hp.epochs:
        log.info("Nothing left to train: the checkpoint in %s is of a finished run", out)
        return _finish(ckpt, run, model, class_names, tracker, world)
    # on a CPU the model and the batch builder share the same cores: a background thread would only contend
    data = build_data(hp, channels, config, prefetch=device.type == "cuda", world=world)
    refresh = _pipe_refresh(hp, channels, config, world, prefetch=device.type == "cuda")
    loss_fn = make_loss(bool(hp.multi_label), bool(hp.use_weighted_loss), data.train_source.labels, device)
    optim.warn_if_epoch_length_differs(hp, len(data.train), world.hosts)
    if world.distributed:
        log.info("Rank %d of %d: %d training batches of %d images per epoch (global batch %d = mini_batch_size %d x "
                 "%d hosts)", world.rank, world.size, len(data.train), data.train.batch_size,
                 data.train.batch_size * world.size, hp.mini_batch_size, world.hosts)
    if world.is_main:
        files = FileTracker(out, resume_from_epoch=run.epochs_done - 1 if run.epochs_done else None)
        tracker = files if tracker is None else MultiTracker(files, tracker)  # metrics.jsonl is always written
    else:
        tracker = NullTracker()
    step = _step(hp, model, optimizer, loss_fn, device, autocast, scaler, world)
    try:
        tracker.log_params(hp.to_dict())
        _train_epochs(hp, config, step, model, data, run, ckpt, tracker, world, refresh)
    except BaseException:
        tracker.close()  # what was logged stays on disk; the run resumes from the last checkpoint
        raise
    return _finish(ckpt, run, model, class_names, tracker, world)


def _pipe_refresh(hp: HyperParameters, channels: dict[str, Channel], config: TrainConfig,
                  world: distributed.World, prefetch: bool) -> Callable[[DataBundle], None] | None:
    """For channels fed by Pipe-mode FIFOs: read the next pass before each later epoch and, when a stream changed,
    rebuild the data in place (:mod:`openic.train.pipe_feed`); None when no channel is."""
    if not any(c.pipe_fifo is not None for c in channels.values()):
        return None
    from openic.train.pipe_feed import PipeFeed

    feed = PipeFeed(channels, world)

    def refresh(data: DataBundle) -> None:
        fresh = feed.advance()
        if fresh is None:
            return
        data.release()  # the decoded set in memory goes before the new one is decoded
        new = build_data(hp, {**channels, **fresh}, config, prefetch=prefetch, world=world)
        data.train, data.validation, data.train_source = new.train, new.validation, new.train_source
        log.info("Rebuilt training data: %d images, %d batches per epoch on this rank", len(new.train_source),
                 len(new.train))
        optim.warn_if_epoch_length_differs(hp, len(new.train), world.hosts)
    return refresh


def _follow_rank0(model: nn.Module, optimizer: torch.optim.Optimizer, run: RunState) -> RunState:
    """Every rank starts where rank 0 does: its weights (fresh, incremental or resumed), optimizer state, counters."""
    distributed.broadcast_module(model)
    state = distributed.broadcast_object({"run": run, "optimizer": optimizer.state_dict() if run.epochs_done else
                                          None})
    if state["optimizer"] is not None:  # type: ignore[index]
        optimizer.load_state_dict(state["optimizer"])  # type: ignore[index]
    return state["run"]  # type: ignore[index]


def _step(hp: HyperParameters, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
          device: torch.device, autocast: contextlib.AbstractContextManager, scaler: torch.amp.GradScaler | None,
          world: distributed.World) -> Step:
    """``dist_sync`` (or no kv_store): DDP all-reduces gradients every step. ``dist_async``: each rank steps on its
    own gradients and torch's ``PeriodicModelAverager`` averages the weights every few steps (post-local SGD), the
    nearest existing PyTorch mechanism to MXNet's asynchronous parameter server."""
    if not world.distributed:
        return Step(model, optimizer, loss_fn, device, autocast, scaler)
    if hp.kv_store == "dist_async":
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

        averager = PeriodicModelAverager(period=ASYNC_AVERAGING_PERIOD, warmup_steps=0)
        return Step(model, optimizer, loss_fn, device, autocast, scaler,
                    after_step=lambda: averager.average_parameters(model.parameters()))
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)  # buffers: average_buffers
    return Step(wrapped, optimizer, loss_fn, device, autocast, scaler)


def _train_epochs(hp: HyperParameters, config: TrainConfig, step: Step, model: nn.Module, data: DataBundle,
                  run: RunState, ckpt: Checkpointer, tracker: Tracker, world: distributed.World,
                  refresh: Callable[[DataBundle], None] | None = None) -> None:
    """Per epoch: train, re-estimate BatchNorm statistics, validate, log, keep weights, checkpoint, maybe stop.

    ``model`` is the bare network (``step.model`` may be its DDP wrapper); every figure logged is over all ranks.
    ``refresh`` (Pipe mode) runs before every epoch after this process's first and may rebuild ``data``.
    """
    epoch_steps, progress = optim.steps_per_epoch(hp, world.hosts), progress_enabled(config) and world.is_main
    first = run.epochs_done
    for epoch in range(first, hp.epochs):
        if refresh is not None and epoch > first:
            refresh(data)
        data.train.set_epoch(epoch)
        recent: deque = deque(maxlen=config.precise_bn_batches)
        tic = time.perf_counter()
        train = train_one_epoch(step, data.train, hp, run, epoch, log_every=config.log_every,
                                epoch_steps=epoch_steps, tracker=tracker, progress=progress,
                                keep=recent if recent.maxlen else None)
        if hp.kv_store == "dist_async":
            distributed.average_parameters(model)  # validation and checkpoints see one model
        recalibrate_batchnorm(model, list(recent), step.autocast)
        distributed.average_buffers(model)
        elapsed = time.perf_counter() - tic
        log_epoch_train(epoch, train, elapsed)
        val = evaluate(model, data.validation, hp, step.device, step.autocast, step.loss_fn)
        accuracy = val["accuracy"]
        log.info("Epoch[%d] Validation-accuracy=%f", epoch, accuracy)
        record = prefixed("train", train) | prefixed("validation", val) | {
            "learning_rate": optim.learning_rate_at(hp, run.num_update - 1, epoch_steps), "epoch_time": elapsed,
            "samples_per_sec": len(data.train_source) / elapsed}
        tracker.log_metrics(record, step=run.num_update, epoch=epoch)
        run.history.append({"epoch": epoch, **record})
        run.epochs_done = epoch + 1
        if hp.early_stopping:
            gained = improved(run.best_accuracy, accuracy, hp.early_stopping_tolerance)
            run.epochs_without_improvement = 0 if gained else run.epochs_without_improvement + 1
        if run.best_accuracy is None or accuracy > run.best_accuracy:  # strictly better, as SageMaker keeps it
            run.best_accuracy, run.best_epoch = accuracy, epoch
            ckpt.save_best(model, accuracy)
        ckpt.save_periodic(run, epoch, model)
        run.stopped_early = should_stop_early(hp, run, epoch)
        ckpt.save(run, model, step.optimizer, step.scaler)
        if run.stopped_early:
            log.info("Early stopping: validation accuracy did not improve for %d epochs (best %f at epoch %d)",
                     hp.early_stopping_patience, run.best_accuracy, run.best_epoch)
            return


def _finish(ckpt: Checkpointer, run: RunState, model: nn.Module, class_names: list[str] | None,
            tracker: Tracker | None, world: distributed.World) -> TrainResult:
    """Rank 0 writes ``model.tar.gz`` once every rank has confirmed it holds the same weights."""
    distributed.check_replicas_agree(model, world)
    model_path = ckpt.write_model(run, model, class_names=class_names)
    if tracker is not None:
        tracker.close()
    if world.is_main:
        log.info("Model written to %s", model_path)
    return TrainResult(ckpt.out, model_path, run.epochs_done, run.best_epoch, run.best_accuracy, run.history)
