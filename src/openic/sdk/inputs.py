"""``TrainingInput`` (v1: ``s3_input``) and the checks that a channel's content type fits its files.

A channel is a local path now and an ``s3://`` URI once S3 support lands; the SDK passes both through to the
job, and the one place that reads them (:func:`openic.data.sources.open_channel`) decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openic.errors import ClientError, shown
from openic.storage import is_s3, parse_s3_uri

CHANNELS = ("train", "validation", "train_lst", "validation_lst", "model")
RECORDIO = "application/x-recordio"
IMAGE_TYPES = ("application/x-image", "image/jpeg", "image/png", "application/jpeg")
CONTENT_TYPES = (RECORDIO, *IMAGE_TYPES, "application/x-recordio-protobuf")
DATA_TYPES = ("S3Prefix", "ManifestFile", "AugmentedManifestFile")
DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")
INPUT_MODES = (None, "File", "FastFile", "Pipe")


@dataclass
class TrainingInput:
    """One channel, spelled as SageMaker's ``TrainingInput``; ``s3_data`` is a local path or ``s3://`` URI."""

    s3_data: str | Path
    distribution: str | None = None
    compression: str | None = None
    content_type: str | None = None
    record_wrapping: str | None = None
    s3_data_type: str = "S3Prefix"
    input_mode: str | None = None
    attribute_names: list[str] | None = None
    target_attribute_name: str | None = None
    shuffle_config: object | None = None

    def __post_init__(self) -> None:
        self.s3_data = str(self.s3_data)
        if not self.s3_data:
            raise ClientError("TrainingInput needs a path or s3:// URI, got an empty string")
        _choice("distribution", self.distribution, (None, *DISTRIBUTIONS))
        _choice("s3_data_type", self.s3_data_type, DATA_TYPES)
        _choice("input_mode", self.input_mode, INPUT_MODES)
        _choice("compression", self.compression, (None, "None"))
        if self.content_type is not None and self.media_type not in CONTENT_TYPES:
            raise ClientError(f"content_type {shown(self.content_type)} is not one image classification reads; "
                              f"valid: {', '.join(CONTENT_TYPES)}")

    @property
    def media_type(self) -> str | None:
        return None if self.content_type is None else self.content_type.split(";")[0].strip().lower()

    @property
    def label_format(self) -> str | None:
        """``label-format=class-id`` from an augmented manifest's content type (SageMaker's parameter)."""
        for part in (self.content_type or "").split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "label-format":
                return value.strip()
        return None


def s3_input(s3_data: str | Path, distribution: str = "FullyReplicated", compression: str | None = None,
             content_type: str | None = None, record_wrapping: str | None = None, s3_data_type: str = "S3Prefix",
             input_mode: str | None = None, attribute_names: list[str] | None = None, **ignored: object
             ) -> TrainingInput:
    """SDK v1's name for :class:`TrainingInput` (same arguments)."""
    return TrainingInput(s3_data, distribution, compression, content_type, record_wrapping, s3_data_type,
                         input_mode, attribute_names)


def _choice(name: str, value: object, valid: tuple) -> None:
    if value not in valid:
        raise ClientError(f"{name} {shown(value)} is not valid; use one of "
                          f"{', '.join(str(v) for v in valid if v is not None)}")


def as_inputs(inputs: object) -> dict[str, TrainingInput]:
    """``fit``'s ``inputs``: a dict of channel -> path/TrainingInput, or one path/TrainingInput (the train channel)."""
    if isinstance(inputs, str | Path | TrainingInput):
        inputs = {"train": inputs}
    if not isinstance(inputs, dict):
        raise ClientError(f"inputs must be a dict of channel name -> path or TrainingInput, got {shown(inputs)}")
    unknown = sorted(set(inputs) - set(CHANNELS))
    if unknown:
        raise ClientError(f"unknown channel(s) {', '.join(map(repr, unknown))}; image classification reads "
                          f"{', '.join(CHANNELS)}")
    out = {k: v if isinstance(v, TrainingInput) else TrainingInput(v) for k, v in inputs.items()}
    for needed in ("train", "validation"):
        if needed not in out:
            raise ClientError(f"the {needed!r} channel is missing: image classification needs train and validation "
                              f"(got {', '.join(out) or 'none'})")
    for name, channel in out.items():
        if is_s3(channel.s3_data):
            try:
                parse_s3_uri(channel.s3_data)  # a malformed URI fails here; the objects are fetched by the job
            except ClientError as e:
                raise ClientError(f"{name} channel: {e}") from None
        check_content_type(name, channel)
    return out


def check_content_type(name: str, channel: TrainingInput) -> None:
    """Refuse a content type that disagrees with the files before any work starts (local paths only)."""
    media, path = channel.media_type, channel.s3_data
    if media is None or path.startswith("s3://") or name == "model":
        return
    p = Path(path)
    if not p.exists():
        raise ClientError(f"{name} channel: {p} does not exist")
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    suffixes = {f.suffix.lower() for f in files}
    if channel.s3_data_type == "AugmentedManifestFile":
        if media != RECORDIO or not suffixes & {".manifest", ".jsonl", ".json"}:
            raise ClientError(f"{name} channel: an AugmentedManifestFile needs content_type {RECORDIO} and a "
                              f".manifest/.jsonl file; got {channel.content_type!r} and {p}")
    elif media == RECORDIO and ".rec" not in suffixes:
        raise ClientError(f"{name} channel: content_type {RECORDIO} but {p} holds no .rec file "
                          f"(image folders and .lst files are application/x-image)")
    elif media in IMAGE_TYPES and name.endswith("_lst") and ".lst" not in suffixes:
        raise ClientError(f"{name} channel: {p} holds no .lst file")
    elif media in IMAGE_TYPES and not name.endswith("_lst") and ".rec" in suffixes and len(suffixes) == 1:
        raise ClientError(f"{name} channel: content_type {channel.content_type!r} but {p} holds RecordIO (.rec); "
                          f"use content_type={RECORDIO!r}")
