"""SageMaker's Pipe mode for ``s3://`` RecordIO channels: records read straight from S3, never a local copy.

One forward scan (ranged GETs with read-ahead, :mod:`openic.storage.s3file`) finds every record's offset and label;
images are then read by offset through the same kind of ranged file, one per process (forked decoders and
DataLoader workers open their own). Nothing holds more than a few chunks of an object at a time. Decoding once into
memory (the default while the decoded set fits ``--cache-mb``) reads each object twice in all, in order; the
streaming path reads one chunk per random image, so Pipe mode suits data sets that fit in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from openic.errors import ClientError
from openic.formats.recordio import scan_stream, unpack

SCAN_CHUNK = 8 << 20  # bytes per ranged GET while scanning (read forward, two chunks ahead)
READ_CHUNK = 1 << 20  # bytes per GET when reading images by offset


def pipe_uris(uri: str) -> list[str]:
    """The ``.rec`` objects of a channel URI (one object, or every ``.rec`` under the prefix, sorted)."""
    from openic.storage.s3base import list_objects, parse_s3_uri, s3_uri

    bucket, _ = parse_s3_uri(uri)
    keys = sorted(o.key for o in list_objects(uri))
    recs = [k for k in keys if k.lower().endswith(".rec")]
    if not recs:
        raise ClientError(f"{uri}: Pipe mode reads RecordIO, and there is no .rec object here (found: "
                          f"{', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}); use File mode for image "
                          "folders, .lst files and manifests")
    return [s3_uri(bucket, k) for k in recs]


INPUT_MODES = ("File", "FastFile", "Pipe")


def make_channel(name: str, location: str, lst: str | None = None, mode: str | None = None) -> Any:
    """A :class:`~openic.data.sources.Channel` for a local path or ``s3://`` location: File (and FastFile) mode
    copies S3 data into this host's cache once; Pipe mode reads ``.rec`` objects straight from S3."""
    from openic.data.sources import Channel
    from openic.storage.local import local_path
    from openic.storage.uri import is_s3

    mode = mode or "File"
    if mode not in INPUT_MODES:
        raise ClientError(f"input mode {mode!r} for the {name} channel is not one of {', '.join(INPUT_MODES)}")
    if mode == "Pipe":
        if not is_s3(location):
            raise ClientError(f"{name} channel: Pipe mode reads s3:// RecordIO; {location} is a local path (File "
                              "mode reads it as it is)")
        if lst is not None:
            raise ClientError(f"{name} channel: Pipe mode reads RecordIO only; a .lst channel needs File mode")
        return Channel(name, Path(location), None, pipe_uri=str(location))
    return Channel(name, local_path(location), local_path(lst) if lst else None)


class PipeRecordSource:
    """Records of one or more ``s3://`` RecordIO objects, in object order; the ``Source`` protocol of
    :mod:`openic.data.sources` (``len``, ``read``, ``labels``, ``describe``)."""

    def __init__(self, uris: list[str], *, num_classes: int | None = None) -> None:
        from openic.data.sources import _label_matrix
        from openic.storage.s3file import open_ranged

        self.uris = list(uris)
        self.locations: list[tuple[int, int]] = []
        labels: list[tuple[float, ...]] = []
        for fno, uri in enumerate(self.uris):
            with open_ranged(uri, chunk_size=SCAN_CHUNK, read_ahead=2) as f:
                if f.size == 0:
                    raise ClientError(f"Unable to start training. Empty .rec object: {uri}")
                for record, span in scan_stream(f, uri):
                    header = self._header(record, uri, span.offset)
                    self.locations.append((fno, span.offset))
                    labels.append(header.label if isinstance(header.label, tuple) else (header.label,))
        self.labels = _label_matrix(labels, self.describe, num_classes)
        self._files: list[Any] = []
        self._pid = -1

    @staticmethod
    def _header(record: bytes, uri: str, offset: int) -> Any:
        from openic.data.sources import unpack_checked

        return unpack_checked(record, uri, offset)[0]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.locations)

    def _file(self, fno: int) -> Any:
        """This process's ranged file of object ``fno`` (a forked child or a worker opens its own)."""
        if self._pid != os.getpid():
            from openic.storage.s3file import open_ranged

            self._files = [open_ranged(u, chunk_size=READ_CHUNK, read_ahead=1) for u in self.uris]
            self._pid = os.getpid()
        return self._files[fno]

    def read(self, i: int) -> bytes:
        fno, offset = self.locations[i]
        f = self._file(fno)
        f.seek(offset)
        record, _ = next(scan_stream(f, self.uris[fno], offset))
        return unpack(record)[1]

    def describe(self, i: int) -> str:
        fno, offset = self.locations[i]
        return f"{self.uris[fno]} (record {i} at offset {offset})"

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_pid")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._files, self._pid = [], -1
