"""SageMaker's training-container layout (spec §4), read into one :class:`ContainerJob`.

``docker run IMAGE train`` finds everything under ``/opt/ml`` (the caller passes the root, so tests and
``openic train --sagemaker --ml-root DIR`` can point it anywhere):

- ``input/config/hyperparameters.json``: SageMaker's string map;
- ``input/config/inputdataconfig.json``: per channel ``ContentType``, ``TrainingInputMode``, ``S3DistributionType``,
  ``RecordWrapperType``;
- ``input/config/resourceconfig.json``: ``current_host`` and the (sorted) ``hosts`` of a multi-instance job;
- ``input/data/<channel>/`` in File/FastFile mode, FIFOs ``input/data/<channel>_<epoch>`` in Pipe mode;
- outputs: ``model/`` (SageMaker tars it into ``model.tar.gz``), ``output/failure``, ``checkpoints/``.

Pipe mode (each pass over a channel through a FIFO of its own) is read by :mod:`openic.train.pipe_feed`.
"""

from __future__ import annotations

import json
import logging
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from openic.artifacts import safe_extract
from openic.data.sources import Channel
from openic.errors import ClientError, shown
from openic.fileio import os_reason
from openic.hyperparams import load_hyperparameters_file, sagemaker_string

log = logging.getLogger(__name__)

VALID_CHANNELS = ("train", "validation", "train_lst", "validation_lst", "model")
LST_CHANNELS = {"train_lst": "train", "validation_lst": "validation"}  # folded into the images channel's ``lst``
PIPE_CHANNELS = ("train", "validation")  # RecordIO streams; .lst images and models are File-mode only (spec §2)
INPUT_MODES = ("File", "Pipe", "FastFile")
DISTRIBUTION_TYPES = ("FullyReplicated", "ShardedByS3Key")  # sharded: each host got its own files already
RECORD_WRAPPERS = ("None", "RecordIO")
LABEL_FORMATS = ("multi-hot", "class-id")
DEFAULT_HOST = "algo-1"  # SageMaker's name for the only host of a single-instance job


@dataclass
class ContainerJob:
    """One training job as the container sees it; ``channels`` is replaced per Pipe channel once spooled."""

    ml_root: Path
    hyperparameters: dict[str, str]
    channels: dict[str, Channel]
    input_modes: dict[str, str]
    content_types: dict[str, str]
    label_format: str | None
    output_dir: Path
    model_dir: Path
    checkpoint_dir: Path
    hosts: list[str]
    current_host: str
    distributions: dict[str, str] = field(default_factory=dict)  # channel -> S3DistributionType, where given

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def nnodes(self) -> int:
        return len(self.hosts)

    @property
    def master_addr(self) -> str:
        """The first of the sorted hosts, as SageMaker's own distributed algorithms pick their leader."""
        return self.hosts[0]

    @property
    def data_dir(self) -> Path:
        return self.ml_root / "input" / "data"

    @property
    def failure_file(self) -> Path:
        """Its first 1024 characters become the job's ``FailureReason``."""
        return self.output_dir / "failure"


def load_container_job(ml_root: Path) -> ContainerJob:
    """Read the job's configuration files and channel folders under ``ml_root`` (``/opt/ml`` in SageMaker).

    Raises:
        ClientError: naming the file or folder and what would be valid (bad JSON, an unknown channel or input mode,
            a File-mode channel without its folder, a ``current_host`` missing from ``hosts``, ...).
    """
    ml_root = Path(ml_root)
    config_dir, data_dir = ml_root / "input" / "config", ml_root / "input" / "data"
    config_file = config_dir / "inputdataconfig.json"
    configs = _input_data_config(config_file)
    names = sorted(set(configs) | _channels_on_disk(data_dir), key=VALID_CHANNELS.index)
    modes = {name: _input_mode(name, configs.get(name, {}), data_dir, config_file) for name in names}
    for name in names:
        if modes[name] != "Pipe" and not (data_dir / name).exists():
            raise ClientError(f"channel '{name}' is in {modes[name]} mode but its folder {data_dir / name} does "
                              f"not exist (input modes come from {config_file})")
    content_types = {n: c["ContentType"] for n, c in configs.items() if "ContentType" in c}
    distributions = {n: c["S3DistributionType"] for n, c in configs.items() if "S3DistributionType" in c}
    hosts, current_host = _resource_config(config_dir / "resourceconfig.json")
    return ContainerJob(
        ml_root=ml_root, hyperparameters=_hyperparameters(config_dir / "hyperparameters.json"),
        channels=_fold_channels(names, modes, data_dir, distributions), input_modes=modes, content_types=content_types,
        label_format=_label_format(content_types, config_file), output_dir=ml_root / "output",
        model_dir=ml_root / "model", checkpoint_dir=ml_root / "checkpoints", hosts=hosts, current_host=current_host,
        distributions=distributions)


def _hyperparameters(path: Path) -> dict[str, str]:
    """SageMaker's string map; values a user wrote as JSON numbers or lists become the strings SageMaker sends."""
    try:
        values = load_hyperparameters_file(path)
    except FileNotFoundError:
        return {}  # every default applies; the schema names the required ones later
    return {str(k): sagemaker_string(v) for k, v in values.items() if v is not None}  # null means unset


def _read_json_object(path: Path, what: str) -> dict[str, object] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = os_reason(e) if isinstance(e, OSError) else str(e)
        raise ClientError(f"{path}: cannot read the {what}: {reason}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:  # its message gives line, column and character
        raise ClientError(f"{path}: not a valid JSON {what}: {e}") from e
    except (ValueError, RecursionError) as e:
        raise ClientError(f"{path}: not a valid {what}: numbers too long or values nested too deeply") from e
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a JSON object for the {what}, got {type(data).__name__}")
    return data


def _input_data_config(path: Path) -> dict[str, dict[str, str]]:
    """Per channel, its settings; each name and each known setting's value is checked against SageMaker's."""
    data = _read_json_object(path, "input data configuration") or {}
    configs: dict[str, dict[str, str]] = {}
    for name, entry in data.items():
        _check_channel_name(name, path)
        if not isinstance(entry, dict):
            raise ClientError(f"{path}: channel '{name}' must map to a JSON object of settings, got {shown(entry)}")
        valid = {"TrainingInputMode": INPUT_MODES, "S3DistributionType": DISTRIBUTION_TYPES,
                 "RecordWrapperType": RECORD_WRAPPERS, "ContentType": None}
        for key, allowed in valid.items():
            value = entry.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                options = f"one of {', '.join(allowed)}" if allowed else "a string"
                raise ClientError(f"{path}: channel '{name}': {key} {shown(value)} is not valid; expected {options}")
        configs[name] = {k: v for k, v in entry.items() if k in valid and isinstance(v, str)}
    return configs


def _check_channel_name(name: str, where: Path) -> None:
    if name not in VALID_CHANNELS:
        raise ClientError(f"{where}: unknown channel {shown(name)}; valid channels: {', '.join(VALID_CHANNELS)}")


def is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


def _channels_on_disk(data_dir: Path) -> set[str]:
    """Channel folders under ``input/data`` (and channels that only have Pipe FIFOs ``<name>_<epoch>``)."""
    if not data_dir.is_dir():
        return set()
    names = set()
    for entry in data_dir.iterdir():
        if entry.name.startswith("."):
            continue
        base, _, epoch = entry.name.rpartition("_")
        if base in VALID_CHANNELS and epoch.isdigit() and not entry.is_dir():
            names.add(base)  # a Pipe FIFO (or a file standing in for one)
        elif entry.is_dir():
            _check_channel_name(entry.name, entry)
            names.add(entry.name)
    return names


def _input_mode(name: str, config: dict[str, str], data_dir: Path, config_file: Path) -> str:
    """The configured mode; a channel without one is in Pipe mode when SageMaker left its FIFO, else File."""
    fifo = data_dir / f"{name}_0"
    mode = config.get("TrainingInputMode") or ("Pipe" if is_fifo(fifo) else "File")
    if mode == "Pipe" and name not in PIPE_CHANNELS:
        raise ClientError(f"{config_file}: channel '{name}' cannot use Pipe mode (only {', '.join(PIPE_CHANNELS)} "
                          "can, with RecordIO data); use File mode")
    return mode


def _fold_channels(names: list[str], modes: dict[str, str], data_dir: Path,
                   distributions: dict[str, str]) -> dict[str, Channel]:
    """``train``/``validation`` (with ``train_lst``/``validation_lst`` as their ``lst``) and ``model``."""
    channels = {}
    for lst_name, images in LST_CHANNELS.items():
        if lst_name in names and images not in names:
            raise ClientError(f"channel '{lst_name}' needs the '{images}' channel too (the images its .lst names "
                              f"are read from {data_dir / images})")
    for name in names:
        if name in LST_CHANNELS:
            continue
        path = data_dir / (f"{name}_0" if modes[name] == "Pipe" else name)
        lst = f"{name}_lst"
        sharded = "ShardedByS3Key" in (distributions.get(name), distributions.get(lst))
        channels[name] = Channel(name, path, lst=data_dir / lst if lst in names else None, sharded=sharded)
    return channels


def _label_format(content_types: dict[str, str], where: Path) -> str | None:
    """``label-format`` from a ContentType such as ``application/x-recordio; label-format=class-id``."""
    found: dict[str, str] = {}
    for name, content_type in content_types.items():
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() != "label-format":
                continue
            value = value.strip().strip("'\"").lower()
            if value not in LABEL_FORMATS:
                raise ClientError(f"{where}: channel '{name}': label-format {shown(value)} is not valid; expected "
                                  f"one of {', '.join(LABEL_FORMATS)}")
            found[name] = value
    if len(set(found.values())) > 1:
        raise ClientError(f"{where}: channels disagree on label-format ({found}); give every channel the same one")
    return next(iter(found.values()), None)


def _resource_config(path: Path) -> tuple[list[str], str]:
    """Sorted ``hosts`` and ``current_host``; a single ``algo-1`` when the file is missing (a local run)."""
    data = _read_json_object(path, "resource configuration")
    if data is None:
        return [DEFAULT_HOST], DEFAULT_HOST
    hosts, current = data.get("hosts"), data.get("current_host")
    if (not isinstance(hosts, list) or not hosts
            or not all(isinstance(h, str) and h and not any(c.isspace() for c in h) for h in hosts)):
        raise ClientError(f"{path}: 'hosts' must be a non-empty list of host names, got {shown(hosts)}")
    if len(set(hosts)) != len(hosts):
        raise ClientError(f"{path}: 'hosts' names a host twice: {shown(hosts, 200)}")
    if current not in hosts:
        raise ClientError(f"{path}: current_host {shown(current)} is not one of the hosts {shown(sorted(hosts), 200)}")
    return sorted(hosts), str(current)


def resolve_master(host: str, attempts: int = 30, delay_s: float = 1.0) -> str:
    """The IP address of ``host``, asking DNS again until it answers.

    SageMaker's hosts come up at different times and their names may resolve only after a while, and its docs say
    not to trust ``/etc/hosts``; torchrun given a name that does not resolve yet fails at once.

    Raises:
        ClientError: naming ``host`` when ``attempts`` lookups, ``delay_s`` seconds apart, all failed.
    """
    if attempts < 1:
        raise ClientError(f"resolve_master: attempts must be at least 1, got {attempts}")
    error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError) as e:  # gaierror; a name idna cannot encode; a NUL byte
            error = e
            if attempt < attempts:
                log.info("cannot resolve the master host %s yet (attempt %d of %d): %s", host, attempt, attempts, e)
                time.sleep(delay_s)
            continue
        ipv4 = [info for info in infos if info[0] == socket.AF_INET]
        return str((ipv4 or infos)[0][4][0])
    raise ClientError(f"cannot resolve the master host {shown(host)} after {attempts} attempts "
                      f"{delay_s:g} s apart: {error}; check resourceconfig.json's hosts and the job's network")


def publish_model(model_tar: Path, model_dir: Path) -> None:
    """Extract the ``model.tar.gz`` the job wrote into ``model_dir``, refusing members that would escape it.

    SageMaker tars ``/opt/ml/model`` itself into ``<job>/output/model.tar.gz``, so the archive's *contents* belong
    there; an archive lying inside ``model_dir`` is removed afterwards, or the upload would hold a copy of itself.
    """
    model_tar, model_dir = Path(model_tar), Path(model_dir)
    extracted = {p.resolve() for p in safe_extract(model_tar, model_dir)}
    archive = model_tar.resolve()
    if archive.parent == model_dir.resolve() and archive not in extracted:
        archive.unlink()
    log.info("Published the model from %s into %s", model_tar, model_dir)
