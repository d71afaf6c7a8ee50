"""Everything ``fit`` needs before its first step: device, data streams, the model.

Each function checks the user's input against the data before any training work starts, so a mistake fails in
seconds with a ``ClientError`` that names the hyperparameter, file or value.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from openic.artifacts import load_model, mxnet_import, pretrained, read_model_metadata
from openic.artifacts.model import artifact_format, load_mxnet_weights
from openic.artifacts.state_dict import load_weights_file
from openic.data.loader import BatchStream, cache_images
from openic.data.sources import Channel, Source, open_channel
from openic.data.transforms import Augmenter
from openic.errors import ClientError
from openic.hyperparams import HyperParameters
from openic.models import create_model
from openic.train.config import TrainConfig
from openic.train.data_checks import cross_check
from openic.train.distributed import World, all_reduce_max, all_reduce_sum

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ClientError(f"device {name!r} is not valid; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClientError(f"device {name!r} was asked for, but no CUDA GPU is available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ClientError(f"device {name!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    return device


@dataclass
class DataBundle:
    train: BatchStream
    validation: BatchStream
    train_source: Source

    def release(self) -> None:
        """Drop the streams (and the images they hold) before a rebuild fills this bundle again."""
        self.train = self.validation = self.train_source = None  # type: ignore[assignment]


def build_data(hp: HyperParameters, channels: dict[str, Channel], config: TrainConfig,
               prefetch: bool = False, world: World | None = None) -> DataBundle:
    """Open both channels, run the data cross-checks, and decide in-memory vs streaming per channel.

    In a distributed job each rank takes its shard of every epoch, in batches of its part of the host's
    ``mini_batch_size``.
    """
    world = world or World()
    for required in ("train", "validation"):
        if required not in channels:
            raise ClientError(f"the {required!r} channel is required (got: {', '.join(sorted(channels)) or 'none'})")
    if config.label_format == "class-id" and not hp.multi_label:
        raise ClientError("label-format class-id lists several class ids per image: it needs multi_label=1 "
                          "(for one class per image, use the default multi-hot format with a single label)")
    num_classes = hp.num_classes if hp.multi_label else None
    sources = {name: open_channel(channels[name], label_format=config.label_format, num_classes=num_classes,
                                  label_attribute=config.label_attribute)
               for name in ("train", "validation")}
    deals = {name: _deal(name, channels[name], source, world) for name, source in sources.items()}
    for name, source in sources.items():
        cross_check(hp, num_images=deals[name].total if name == "train" else None,
                    label_width=source.labels.shape[1], where=source.describe(0))
        _check_label_range(hp, source, name)
    c = hp.image_shape[0]
    progress = progress_enabled(config)
    streams = {}
    for name, source in sources.items():
        cached = cache_images(source, c, hp.resize, config.cache_mb, progress=progress,
                              max_pixels=config.max_image_pixels, workers=config.decode_workers)
        images = cached.images if cached is not None else None
        if cached is not None:
            cross_check(hp, min_image_hw=cached.min_hw)
        train = name == "train"
        augmenter = Augmenter(hp.augmentation_type if train else None, hp.image_shape,
                              None if images is not None else hp.resize)
        log.info("%s data: %d images, %s", name, len(source),
                 "decoded once into memory" if images is not None else "streamed from disk")
        streams[name] = BatchStream(source, augmenter, world.per_process_batch(hp.mini_batch_size), train,
                                    config.seed, images=images,
                                    workers=0 if images is not None else config.decode_workers,
                                    prefetch=prefetch, max_pixels=config.max_image_pixels,
                                    rank=deals[name].rank, world_size=deals[name].size,
                                    per_rank=deals[name].per_rank if train else None)
    return DataBundle(streams["train"], streams["validation"], sources["train"])


@dataclass(frozen=True)
class _Deal:
    """How a channel's images are dealt to the ranks: ``rank`` of ``size``, ``total`` images over all hosts."""

    rank: int
    size: int
    total: int
    per_rank: int | None = None


def _deal(name: str, channel: object, source: Source, world: World) -> _Deal:
    """A replicated channel is dealt over every rank; a ShardedByS3Key one over the host's own ranks, each host
    holding different images, with the training deal cycled to the longest rank's length so that every rank runs
    the same number of batches (DDP hangs otherwise)."""
    if not (getattr(channel, "sharded", False) and world.hosts > 1):
        if world.distributed:
            _check_replicated(name, len(source))
        return _Deal(world.rank, world.size, len(source))
    if len(source) < world.local_size:
        raise ClientError(f"ShardedByS3Key channel '{name}' has {len(source)} image(s) on this host, fewer than "
                          f"its {world.local_size} processes; give every host at least one per process")
    counts = all_reduce_sum(torch.tensor([len(source) if world.local_rank == 0 else 0]))  # each host once
    longest = all_reduce_max(-(-len(source) // world.local_size))
    log.info("%s channel is ShardedByS3Key: %d images on this host, %d over %d hosts; %d per rank and epoch",
             name, len(source), int(counts[0]), world.hosts, longest)
    return _Deal(world.local_rank, world.local_size, int(counts[0]), longest)


def _check_replicated(name: str, count: int) -> None:
    """A replicated channel must hold the same images on every host: dealt over different sets, the ranks would
    run different numbers of batches and DDP would fail mid-epoch with a collective mismatch."""
    fewest, most = -all_reduce_max(-count), all_reduce_max(count)
    if fewest != most:
        raise ClientError(f"the {name} channel is FullyReplicated, but the hosts hold different numbers of images "
                          f"(from {fewest} to {most}; this one {count}): a replicated channel must be the same on "
                          "every host; use ShardedByS3Key to give each host its own part")


def _check_label_range(hp: HyperParameters, source: Source, channel: str) -> None:
    labels = source.labels
    if hp.multi_label:
        bad = ~((labels == 0) | (labels == 1))
        if bad.any():
            i = int(bad.any(axis=1).argmax())
            raise ClientError(f"{source.describe(i)}: multi_label=1 needs 0/1 multi-hot labels, got "
                              f"{labels[i].tolist()} in the {channel} channel")
        return
    lab = labels[:, 0]
    bad = (lab < 0) | (lab >= hp.num_classes) | (lab != lab.round())
    if bad.any():
        i = int(bad.argmax())
        raise ClientError(f"{source.describe(i)}: label {lab[i]:g} in the {channel} channel is not a class index in "
                          f"0..{hp.num_classes - 1} (num_classes={hp.num_classes})")


def progress_enabled(config: TrainConfig) -> bool:
    """Progress bars: as asked, else only when stderr is a terminal (logs stay clean in files and CI)."""
    return config.progress if config.progress is not None else sys.stderr.isatty()


def build_model(hp: HyperParameters, channels: dict[str, Channel], config: TrainConfig) -> nn.Module:
    """A fresh network, or one initialised from the ``model`` channel or ImageNet weights."""
    model = create_model(hp.num_layers, hp.num_classes, hp.image_shape)
    if "model" in channels:
        _load_incremental(model, hp, channels["model"].path)
    elif hp.use_pretrained_model:
        _load_pretrained(model, hp, config.pretrained)
    return model


def _load_incremental(model: nn.Module, hp: HyperParameters, path: Path) -> None:
    if path.is_dir():
        found = sorted(path.glob("*.tar.gz"))
        path = found[0] if len(found) == 1 and not (path / "model.safetensors").exists() else path
    meta = read_model_metadata(path)
    theirs = {k: meta.get(k) for k in ("num_layers", "image_shape", "num_classes")}
    ours = {"num_layers": hp.num_layers, "image_shape": list(hp.image_shape), "num_classes": hp.num_classes}
    for key, value in ours.items():
        their = list(theirs[key]) if isinstance(theirs[key], (list, tuple)) else theirs[key]
        if their != value:
            shown, their_shown = (",".join(map(str, v)) if isinstance(v, list) else v for v in (value, their))
            raise ClientError(f"Incremental training: {key} is {shown} but the model in the model channel ({path}) "
                              f"was trained with {key}={their_shown}; num_layers, image_shape and num_classes must "
                              f"match")
    loaded = load_model(path)
    model.load_state_dict(loaded.model.state_dict())
    log.info("Loaded the model channel for incremental training: %s", path)


def _pretrained_state(hp: HyperParameters, source: Path) -> dict[str, torch.Tensor]:
    """The weights of ``source``: openic artifact / folder / .safetensors, or an MXNet checkpoint (SageMaker's
    artifact, MXNet's published ``resnet-N-symbol.json`` + ``resnet-N-0000.params``, a folder holding several)."""
    params = None  # a .params file named by the user: exactly that one, not the highest NNNN beside it
    if source.is_file() and source.suffix == ".params":
        match = mxnet_import.PARAMS_RE.fullmatch(source.name)
        if not match:
            raise ClientError(f"pretrained weights {source}: an MXNet checkpoint file is named PREFIX-NNNN.params "
                              f"(e.g. resnet-{hp.num_layers}-0000.params) with PREFIX-symbol.json beside it")
        source, prefix, params = source.parent, match.group(1), source.name
    elif source.is_dir() and (source / f"resnet-{hp.num_layers}{mxnet_import.SYMBOL_SUFFIX}").is_file():
        prefix = f"resnet-{hp.num_layers}"
    elif source.is_dir() and not (source / "model.safetensors").exists() and \
            not mxnet_import.is_mxnet([p.name for p in source.iterdir()]):
        source, prefix = source / f"resnet{hp.num_layers}.safetensors", None
    else:
        prefix = None
    if not source.exists():
        raise FileNotFoundError(f"pretrained weights not found: {source}")
    if source.suffix == ".safetensors":
        return load_weights_file(source)
    if prefix is not None or artifact_format(source) == mxnet_import.FORMAT:
        meta, state = load_mxnet_weights(source, hp.image_shape, prefix, params)
        if meta["num_layers"] != hp.num_layers:
            raise ClientError(f"pretrained weights {source} are ResNet-{meta['num_layers']}, but num_layers is "
                              f"{hp.num_layers}")
        return state
    return load_model(source).model.state_dict()


def _load_pretrained(model: nn.Module, hp: HyperParameters, source: Path | None) -> None:
    """Copy every matching tensor of the pretrained weights except the classifier (fc1 is trained afresh)."""
    downloaded = pretrained.default_dir()
    if source is None and (downloaded / f"resnet-{hp.num_layers}{mxnet_import.SYMBOL_SUFFIX}").is_file():
        source = downloaded  # where `openic pretrained download` put them
    if source is None:
        raise ClientError(
            "use_pretrained_model=1 needs ImageNet weights, and openic downloads nothing at run time: pass "
            "--pretrained PATH (MXNet's resnet-N-symbol.json + resnet-N-0000.params as `openic pretrained download "
            "resnet-N` fetches them, an openic model.tar.gz / model directory / .safetensors file of the same "
            "num_layers and image channels) or set OPENIC_PRETRAINED_DIR to a folder holding them")
    state = _pretrained_state(hp, source)
    own = model.state_dict()
    skipped = [k for k in own if k.startswith("fc1.")]
    usable = {k: v for k, v in state.items() if k in own and not k.startswith("fc1.") and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and k not in skipped]
    if missing:
        raise ClientError(f"pretrained weights {source} do not fit ResNet-{hp.num_layers} with "
                          f"{hp.image_shape[0]} channels: {len(missing)} tensors missing or of another shape, e.g. "
                          f"{missing[0]}")
    model.load_state_dict(usable, strict=False)
    log.info("Using pretrained model for initializing weights and transfer learning.")