"""Batch transform, as SageMaker's writes it: for each input object ``X``, ``OUTPUT/X.out`` holds the response.

Inputs: a folder (every file an object, ``SplitType=None``), a ``.rec`` file (``SplitType=RecordIO``: every
record a request, the responses assembled into ``OUTPUT/FILE.rec.out`` by ``AssembleWith``), or a manifest
(JSON lines with ``source-ref``, or SageMaker's ManifestFile ``[{"prefix": ...}, "a.jpg", ...]``; every listed
image an object, ``SplitType=Line``). Objects are decoded in parallel and predicted in batches; finished outputs
are skipped on a re-run; an object that fails is reported by name and the rest go on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from openic.errors import ClientError, shown
from openic.fileio import FileLock, atomic_path
from openic.formats.images import DEFAULT_MAX_IMAGE_PIXELS
from openic.formats.recordio import RecordReader, unpack
from openic.serving.handler import NPY_TYPE, Predictor, RequestError, decode, encode, parse_accept

log = logging.getLogger(__name__)

SPLIT_TYPES = ("None", "RecordIO", "Line")
ASSEMBLE_WITH = ("None", "Line")
MANIFEST_SUFFIXES = (".manifest", ".jsonl")
LOCK = ".openic-transform.lock"


@dataclass(frozen=True)
class TransformOptions:
    content_type: str = "application/x-image"
    accept: str = "application/jsonlines"
    split_type: str | None = None  # None: from the input's kind
    assemble_with: str = "Line"
    preprocess: str = "sagemaker"
    batch_size: int = 32
    workers: int = 4
    max_payload_mb: float = 6.0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split_type not in (None, *SPLIT_TYPES):
            raise ClientError(f"split type {shown(self.split_type)} is not one of {', '.join(SPLIT_TYPES)}")
        if self.assemble_with not in ASSEMBLE_WITH:
            raise ClientError(f"assemble-with {shown(self.assemble_with)} is not one of {', '.join(ASSEMBLE_WITH)}")
        if not 1 <= self.batch_size <= 1024:
            raise ClientError(f"batch size must be 1..1024, got {self.batch_size}")
        if not 1 <= self.workers <= 64:
            raise ClientError(f"workers must be 1..64, got {self.workers}")
        if not 0 < self.max_payload_mb <= 100:
            raise ClientError(f"max payload must be in (0, 100] MB, got {self.max_payload_mb}")


@dataclass
class Report:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Object:
    """One input object: where its bytes come from and where its ``.out`` goes."""

    name: str
    out: Path
    records: list[bytes] | None = None  # RecordIO: the images, read already
    path: Path | None = None


def _kind(source: Path) -> str:
    if source.is_dir():
        return "None"
    if source.suffix.lower() == ".rec":
        return "RecordIO"
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        return "Line"
    raise ClientError(f"{source}: cannot tell the input's kind; give a folder, a .rec file or a "
                      f"{'/'.join(MANIFEST_SUFFIXES)} manifest")


def _manifest_paths(path: Path) -> Iterator[Path]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # SageMaker's ManifestFile: [{"prefix": P}, "rel", ...]
        items = json.loads(text)
        if not items or not isinstance(items[0], dict) or "prefix" not in items[0]:
            raise ClientError(f"{path}: a ManifestFile starts with {{\"prefix\": ...}}")
        prefix = Path(str(items[0]["prefix"]).removeprefix("file://"))
        yield from (prefix / str(rel) for rel in items[1:])
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ref = json.loads(line)["source-ref"]
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"{path}:{lineno}: not a JSON object with a \"source-ref\"") from None
        ref = Path(str(ref).removeprefix("file://"))
        yield ref if ref.is_absolute() else path.parent / ref


def objects(source: Path, output: Path, split_type: str) -> list[_Object]:
    """The input objects of ``source`` in a stable order, each with its output path."""
    if split_type == "RecordIO":
        if source.suffix.lower() != ".rec":
            raise ClientError(f"split type RecordIO needs a .rec file, got {source}")
        with RecordReader(source) as reader:
            records = [unpack(r)[1] for r in reader]
        return [_Object(source.name, output / f"{source.name}.out", records=records)]
    if split_type == "Line":
        if source.is_dir():
            raise ClientError(f"split type Line needs a manifest file, got the folder {source}")
        return [_Object(p.name, output / f"{p.name}.out", path=p) for p in _manifest_paths(source)]
    if not source.is_dir():
        return [_Object(source.name, output / f"{source.name}.out", path=source)]
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix != ".out")
    return [_Object(str(p.relative_to(source)), output / f"{p.relative_to(source)}.out", path=p) for p in files]


def transform(predictor: Predictor, source: Path, output: Path, options: TransformOptions = TransformOptions()
              ) -> Report:
    """Run batch transform of ``source`` into ``output``; see the module docstring."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise ClientError(f"input {source} does not exist")
    split = options.split_type or _kind(source)
    answer = parse_accept(options.accept, predictor.num_classes)
    output.mkdir(parents=True, exist_ok=True)
    report = Report()
    with FileLock(output / LOCK, f"the output folder {output}"):
        todo = []
        for obj in objects(source, output, split):
            if obj.out.exists():
                report.skipped += 1
            else:
                todo.append(obj)
        bar = tqdm(total=len(todo), desc="transform", unit="obj", file=sys.stderr,
                   disable=not options.progress or not sys.stderr.isatty())
        with ThreadPoolExecutor(options.workers) as pool:
            for start in range(0, len(todo), options.batch_size):
                chunk = todo[start:start + options.batch_size]
                decoded = list(pool.map(lambda o: _decode(predictor, o, options), chunk))
                prepared = [_preprocess(predictor, images, options) for images in decoded]  # torch: this thread
                _finish_chunk(predictor, chunk, prepared, answer, options, report)
                bar.update(len(chunk))
        bar.close()
    return report


def _decode(predictor: Predictor, obj: _Object, options: TransformOptions) -> list[np.ndarray] | Exception:
    """The object's decoded images (numpy, no torch: the decoding threads must not start OpenMP teams of their
    own beside the forward pass's), or the reason it cannot be read (an exception, returned)."""
    limit = int(options.max_payload_mb * 1024 * 1024)
    try:
        bodies = obj.records if obj.records is not None else [obj.path.read_bytes()]  # type: ignore[union-attr]
        images: list[np.ndarray] = []
        for body in bodies:
            if len(body) > limit:
                raise RequestError(413, f"{len(body):,} bytes, more than the payload limit of {limit:,}")
            kind = NPY_TYPE if obj.path is not None and obj.path.suffix == ".npy" else options.content_type
            images += decode(body, kind, predictor.image_shape[0], max_pixels=options.max_image_pixels)
        return images
    except (ClientError, OSError) as e:
        return e


def _preprocess(predictor: Predictor, images: list[np.ndarray] | Exception, options: TransformOptions) -> object:
    """The object's model input (torch, on the calling thread), or why it cannot be made."""
    if isinstance(images, Exception):
        return images
    try:
        return predictor.preprocess(images, options.preprocess)
    except ClientError as e:
        return e


def _finish_chunk(predictor: Predictor, chunk: list[_Object], prepared: list[object], answer,
                  options: TransformOptions, report: Report) -> None:
    """One forward pass for the chunk's readable objects; each gets its own ``.out``, each failure its name."""
    good = []
    for obj, batch in zip(chunk, prepared, strict=True):
        if isinstance(batch, Exception):
            report.failed.append((obj.name, str(batch)))
            print(f"{obj.name}: failed: {batch}", file=sys.stderr)
        else:
            good.append((obj, batch))
    if not good:
        return
    probs = predictor.predict(torch.cat([batch for _, batch in good]))  # type: ignore[misc]
    start = 0
    for obj, batch in good:
        n = int(batch.shape[0])  # type: ignore[attr-defined]
        _write(obj, probs[start:start + n], predictor, answer, options)
        start += n
        report.done += 1


def _write(obj: _Object, probs, predictor: Predictor, answer, options: TransformOptions) -> None:
    rows = [encode(probs[i:i + 1], answer, predictor.class_names, predictor.multi_label) for i in range(len(probs))]
    joiner = b"\n" if options.assemble_with == "Line" else b""
    body = joiner.join(r.rstrip(b"\n") for r in rows) + (b"\n" if options.assemble_with == "Line" else b"")
    obj.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(obj.out) as tmp:
        tmp.write_bytes(body)


def transform_location(predictor: Predictor, source: str | Path, output: str | Path,
                       options: TransformOptions = TransformOptions()) -> Report:
    """:func:`transform` where the input and/or the output may be ``s3://`` locations.

    An S3 input is fetched once into this host's cache (File mode); an S3 output is written into a local staging
    folder kept per URI (so a re-run skips what is done there) and uploaded after the run, failed objects
    aside: only files S3 lacks or holds with other bytes are sent. A lease under the output prefix
    (:mod:`openic.storage.s3lease`) refuses a second transform into it from any host.
    """
    from openic.storage import is_s3
    from openic.storage.local import local_path

    if not is_s3(output):
        return transform(predictor, local_path(source), Path(output), options)
    from openic.storage.local import staging_dir
    from openic.storage.s3 import upload_dir
    from openic.storage.s3lease import S3Lease

    uri = str(output).rstrip("/")
    out = staging_dir(uri)
    with S3Lease(f"{uri}/{LOCK}", f"the output {uri}"):  # the staging folder's lock sees this host only
        report = transform(predictor, local_path(source), out, options)
        sent = upload_dir(out, uri, skip=lambda rel: rel == LOCK)
    log.info("transform: %d output file(s) uploaded to %s", sent, uri)
    return report
