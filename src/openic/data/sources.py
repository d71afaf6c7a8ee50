"""Training channels → indexable image sources (encoded bytes + label vectors), no decoding yet.

A SageMaker channel is a folder; openic also accepts a single file. What a channel holds decides its format:
- RecordIO: one or more ``.rec`` files (labels from each record's ``IRHeader``);
- image folder + ``.lst`` (the ``train_lst`` / ``validation_lst`` channels, or a ``.lst`` inside the folder);
- augmented manifest: a ``.manifest`` / ``.jsonl`` file of JSON lines (``source-ref`` + a label attribute).
Every source exposes ``len()``, ``read(i) -> bytes``, ``labels`` (float32 ``[N, L]``) and ``describe(i)`` (for
errors that name the file and record). Sources pickle cheaply, so DataLoader workers re-open files themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openic.errors import ClientError, DataError
from openic.formats.lst import (
    CLASSES_SUFFIX,
    label_count_mismatch,
    read_classes,
    read_lst_with_lines,
    resolve_image_path,
)
from openic.formats.manifest import read_manifest_with_lines
from openic.formats.recordio import IRHeader, RecordReader, unpack

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".manifest", ".jsonl", ".json")


class RecordSource:
    """Records of one or more ``.rec`` files, in file order, found by one scan (an ``.idx`` is not needed, as in
    SageMaker; a stale one beside the file is ignored)."""

    def __init__(self, rec_paths: list[Path], *, num_classes: int | None = None) -> None:
        self.paths = list(rec_paths)
        self._readers: list[RecordReader] | None = None
        self.locations: list[tuple[int, int]] = []  # (file number, offset)
        labels: list[tuple[float, ...]] = []
        for fno, path in enumerate(self.paths):
            with RecordReader(path, use_index=False) as reader:
                if reader.size == 0:
                    raise ClientError(f"Unable to start training. Empty .rec file: {path}")
                for record, span in reader.scan():
                    header, _ = unpack_checked(record, path, span.offset)
                    self.locations.append((fno, span.offset))
                    labels.append(header.label if isinstance(header.label, tuple) else (header.label,))
        self.labels = _label_matrix(labels, self.describe, num_classes)

    def __len__(self) -> int:
        return len(self.locations)

    def _reader(self, fno: int) -> RecordReader:
        if self._readers is None:
            self._readers = [RecordReader(p, use_index=False) for p in self.paths]
        return self._readers[fno]

    def read(self, i: int) -> bytes:
        fno, offset = self.locations[i]
        record = self._reader(fno).read_at(offset)
        return unpack_checked(record, self.paths[fno], offset)[1]

    def describe(self, i: int) -> str:
        fno, offset = self.locations[i]
        return f"{self.paths[fno]} (record {i} at offset {offset})"

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_readers": None}


def unpack_checked(record: bytes, path: Path, offset: int) -> tuple[IRHeader, bytes]:
    try:
        return unpack(record)
    except DataError as e:
        raise DataError(f"{path}: record at offset {offset}: {e}") from None


class FileListSource:
    """Images named by a ``.lst`` file or a manifest, read from disk on demand."""

    def __init__(self, files: list[Path], labels: np.ndarray, origins: list[str]) -> None:
        self.files, self.labels, self.origins = files, labels, origins

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> bytes:
        try:
            return self.files[i].read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.origins[i]}: image not found: {self.files[i]}") from None

    def describe(self, i: int) -> str:
        return f"{self.files[i]} ({self.origins[i]})"


Source = RecordSource | FileListSource


@dataclass(frozen=True)
class Channel:
    """Where a channel's data lives: ``path`` (file or folder) and an optional ``.lst`` file or folder."""

    name: str
    path: Path
    lst: Path | None = None
    pipe_uri: str | None = None  # Pipe mode: RecordIO read straight from this s3:// location (``path`` unused)
    sharded: bool = False  # ShardedByS3Key: each host holds its own part, not a copy of the whole channel
    pipe_fifo: Path | None = None  # Pipe mode over FIFOs: pass k (k >= 1) comes from ``<pipe_fifo>_<k>``


def _label_matrix(labels: list[tuple[float, ...]], describe: Callable[[int], str],
                  num_classes: int | None = None) -> np.ndarray:
    """``[N, L]`` float32 labels; every image carries the same number, ``num_classes`` when given (multi-label).

    The first image that differs is named (file:line, or file and record) with both widths, in SageMaker's words.
    """
    if not labels:
        raise ClientError("no images found")
    width = len(labels[0]) if num_classes is None else num_classes
    for i, lab in enumerate(labels):
        if len(lab) == width:
            continue
        if num_classes is not None:
            raise DataError(label_count_mismatch(len(lab), num_classes, describe(i)))
        raise DataError(f"{describe(i)}: {len(lab)} labels, but {describe(0)} has {width}; every image needs the "
                        "same number of labels.")
    return np.asarray(labels, dtype=np.float32).reshape(len(labels), width)


def _find(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _lst_source(lst_files: list[Path], root: Path, num_classes: int | None = None) -> FileListSource:
    files: list[Path] = []
    labels: list[tuple[float, ...]] = []
    origins: list[str] = []
    for lst in lst_files:
        for lineno, entry in read_lst_with_lines(lst, num_classes=num_classes):
            source = f"{lst}:{lineno}"
            path = resolve_image_path(root, entry.path, source=source)
            _require_file(path, source, root)
            files.append(path)
            labels.append(tuple(entry.labels))
            origins.append(source)
    return FileListSource(files, _label_matrix(labels, origins.__getitem__, num_classes), origins)


def _manifest_source(manifest: Path, label_format: str, num_classes: int | None,
                     label_attribute: str | None = None) -> FileListSource:
    """Images named by ``source-ref`` (relative to the manifest's folder, or ``file://`` relative URIs)."""
    entries = read_manifest_with_lines(manifest, label_attribute, label_format=label_format, num_classes=num_classes)
    files, labels, origins = [], [], []
    for lineno, entry in entries:
        source = f"{manifest}:{lineno}"
        ref = entry.source_ref.removeprefix("file://")
        if "://" in ref:
            raise ClientError(f"{source}: source-ref {entry.source_ref!r} is not a local file; openic reads "
                              f"manifests whose source-ref is a path relative to the manifest's folder")
        path = resolve_image_path(manifest.parent, ref, source=source)
        _require_file(path, source, manifest.parent)
        files.append(path)
        labels.append(tuple(entry.labels))
        origins.append(source)
    return FileListSource(files, _label_matrix(labels, origins.__getitem__, num_classes), origins)


def _require_file(path: Path, source: str, root: Path) -> None:
    """Fail before training starts, as SageMaker's conversion of images to RecordIO does."""
    if not path.is_file():
        raise FileNotFoundError(f"{source}: image not found: {path} (paths are relative to {root})")


def open_channel(channel: Channel, *, label_format: str = "multi-hot", num_classes: int | None = None,
                 label_attribute: str | None = None) -> Source:
    """Decide the channel's format from what it holds and open it; errors name the channel and path.

    ``label_format``/``label_attribute`` apply to augmented manifests (SageMaker's content-type parameter and
    ``AttributeNames``); by default the manifest's only non-``source-ref``, non-metadata key is the label.
    ``num_classes`` (multi-label only) is the label width every image must have; the first one that differs is
    named (file:line, or file and record) in the error.
    """
    path, name = channel.path, channel.name
    if channel.pipe_uri is not None:
        from openic.data.pipe import PipeRecordSource, pipe_uris

        if channel.lst is not None:
            raise ClientError(f"{name} channel: Pipe mode reads RecordIO only; a .lst channel needs File mode")
        log.info("Reading the %s channel in Pipe mode from %s", name, channel.pipe_uri)
        return PipeRecordSource(pipe_uris(channel.pipe_uri), num_classes=num_classes)
    if not path.exists():
        raise FileNotFoundError(f"{name} channel: {path} does not exist")
    if channel.lst is not None:
        if not channel.lst.exists():
            raise FileNotFoundError(f"{name}_lst channel: {channel.lst} does not exist")
        lsts = [channel.lst] if channel.lst.is_file() else _find(channel.lst, (".lst",))
        if not lsts:
            raise ClientError(f"{name}_lst channel: no .lst file in {channel.lst}")
        root = path if path.is_dir() else path.parent
        log.info("Creating the %s data set from %s", name, ", ".join(map(str, lsts)))
        return _lst_source(lsts, root, num_classes)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".rec":
            return RecordSource([path], num_classes=num_classes)
        if suffix == ".lst":
            return _lst_source([path], path.parent, num_classes)
        if suffix in MANIFEST_SUFFIXES:
            return _manifest_source(path, label_format, num_classes, label_attribute)
        raise ClientError(f"{name} channel: cannot tell the format of {path}; expected a .rec, .lst or "
                          f"{'/'.join(MANIFEST_SUFFIXES)} file, or a folder holding them")
    log.info("Searching for .rec files in %s.", path)
    recs = _find(path, (".rec",))
    if recs:
        return RecordSource(recs, num_classes=num_classes)
    lsts = _find(path, (".lst",))
    if lsts:
        return _lst_source(lsts, path, num_classes)
    manifests = _find(path, MANIFEST_SUFFIXES)
    if len(manifests) == 1:
        return _manifest_source(manifests[0], label_format, num_classes, label_attribute)
    if len(manifests) > 1:
        raise ClientError(f"{name} channel: {len(manifests)} manifests in {path} ({', '.join(map(str, manifests[:3]))}"
                          f"{', ...' if len(manifests) > 3 else ''}); pass the one to use as --{name} FILE")
    raise ClientError(f"Unable to start training. No .rec, .lst or manifest file in the {name} channel ({path}); "
                      f"image folders need a .lst file (pass --{name}-lst or run `openic im2rec --list`)")


_SPLIT_SUFFIXES = ("_train", "_val", "_validation", "_test")


def find_class_names(channel: Channel, num_classes: int) -> list[str] | None:
    """Class names from the ``PREFIX_classes.txt`` sidecar that im2rec and ``openic datasets`` write, if any.

    For ``X_train.rec`` (or ``X_train.lst``) this is ``X_classes.txt`` beside it; for a folder, its only
    ``*_classes.txt``. A file whose line count is not ``num_classes`` is ignored with a warning.
    """
    candidates: list[Path] = []
    for path in (channel.lst, channel.path):
        if path is None:
            continue
        if path.is_file():
            stem = path.stem
            for suffix in _SPLIT_SUFFIXES:
                if stem.endswith(suffix):
                    candidates.append(path.with_name(stem[: -len(suffix)] + CLASSES_SUFFIX))
            candidates.append(path.with_name(stem + CLASSES_SUFFIX))
        elif path.is_dir():
            found = sorted(path.glob("*" + CLASSES_SUFFIX))
            if len(found) == 1:
                candidates.append(found[0])
    for candidate in candidates:
        if candidate.is_file():
            names = read_classes(candidate)
            if len(names) == num_classes:
                log.info("Class names from %s", candidate)
                return names
            log.warning("Ignoring %s: it names %d classes, num_classes is %d", candidate, len(names), num_classes)
    return None
