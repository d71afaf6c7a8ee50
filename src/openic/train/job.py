"""SageMaker's training-job contract, shared by ``openic train``, the SDK (``openic demo``) and a container entry.

A job is: hyperparameters from a JSON file (SageMaker's ``hyperparameters.json``) plus overrides, the channels,
and run options. :func:`run_job` owns everything around :func:`openic.train.loop.fit`:

- the output folder is locked for the run (an OS lock that dies with the process): a second job on the same
  folder fails at once with a ``ClientError`` naming the folder and the other process, and writes nothing there;
  an ``s3://`` output or checkpoint prefix is also leased on S3 (:mod:`openic.storage.s3lease`), so that a job on
  another host is refused too;
- the reason a job fails goes to ``OUTPUT_DIR/failure`` (SageMaker's ``/opt/ml/output/failure``), first line
  prefixed ``ClientError:`` (the user's input) or ``AlgorithmError:`` (ours, with the traceback below);
- exit codes: 0 done, 2 ``ClientError``, 1 ``AlgorithmError``, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM
  (how SageMaker stops a job); after 130 or 143 the same command resumes from ``checkpoints/last`` when resuming
  is on (the default) and an epoch had completed, and the stop message says which applies;
- in a distributed job (``WORLD_SIZE`` set by torchrun) every rank runs this, and rank 0 alone holds the lock and
  writes the failure file (see ``openic.train.launch`` for how a dead rank is reported).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from openic.errors import ClientError
from openic.fileio import FileLock, atomic_write_text, os_reason
from openic.hyperparams import HyperParameters, load_hyperparameters_file
from openic.tracking import Tracker
from openic.train.config import TrainConfig

log = logging.getLogger(__name__)

FAILURE = "failure"
LOCK = ".openic-job.lock"
EXIT_OK, EXIT_ALGORITHM, EXIT_CLIENT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

# The SageMaker workshop's settings (ResNet-18 at 3,28,28, batch 128, lr 0.01, as bench/train.py's "workshop"),
# for the digits demo's 1,437 training images and a few epochs.
DEMO_HYPERPARAMETERS = {
    "num_layers": "18", "image_shape": "3,28,28", "num_classes": "10", "num_training_samples": "1437",
    "mini_batch_size": "128", "epochs": "4", "learning_rate": "0.01", "augmentation_type": "crop",
    "precision_dtype": "float32", "top_k": "2",
}


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (checkpoints stay as they were after the last completed epoch)."""


@dataclass
class JobResult:
    """How a job ended: the exit code, the training result when it succeeded, the failure text otherwise."""

    exit_code: int
    result: object | None = None  # openic.train.loop.TrainResult
    failure: str | None = None
    model_uri: str | None = None  # where model.tar.gz was uploaded, for an s3:// output_dir


def resolve_hyperparameters(file: Path | None, overrides: Mapping[str, object]) -> HyperParameters:
    """The job's hyperparameters: the file's values (if any), then ``overrides`` on top, parsed once."""
    raw: dict[str, object] = dict(load_hyperparameters_file(file)) if file is not None else {}
    return HyperParameters.from_strings(raw | dict(overrides))


def check_output_dir(path: Path) -> Path:
    """Create the output folder, or say clearly why it cannot be one (a file, no permission)."""
    if path.exists() and not path.is_dir():
        raise ClientError(f"--output-dir {path} is a file, not a folder; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClientError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    return path


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the ``with`` body (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a forked DataLoader worker: die as SIGTERM would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(channels: Mapping[str, object], options: TrainConfig | Mapping[str, object], *,
            hyperparameters_file: Path | None = None, overrides: Mapping[str, object] | None = None,
            tracker: Tracker | None = None) -> JobResult:
    """Run one training job under SageMaker's contract (see the module docstring); never raises for bad input.

    ``options`` is a ``TrainConfig`` or its fields as a mapping (``output_dir`` required); a mapping is validated
    once the output folder is locked, so a bad option is reported in that folder's ``failure`` file. In a mapping,
    ``output_dir`` and ``checkpoint_dir`` may be ``s3://`` URIs (``openic.train.remote``).
    """
    out = options.output_dir if isinstance(options, TrainConfig) else options.get("output_dir")
    if out is None:
        return JobResult(EXIT_CLIENT, failure="ClientError: an output directory is required (--output-dir)")
    remote = None
    if not isinstance(options, TrainConfig):
        from openic.train.remote import RemoteOutputs

        try:
            remote = RemoteOutputs.plan(out, options.get("checkpoint_dir"))  # type: ignore[arg-type]
        except ClientError as e:
            print(f"ClientError: {e}", file=sys.stderr)
            return JobResult(EXIT_CLIENT, failure=f"ClientError: {e}")
        if remote.remote:
            out = remote.output_dir
            options = {**options, "output_dir": out, "checkpoint_dir": remote.checkpoint_dir}
        else:
            remote = None
    out = Path(out)  # type: ignore[arg-type]
    main = is_main_process()
    with ExitStack() as held:
        try:
            check_output_dir(out)
            if main:  # the ranks of one job share the folder: rank 0 holds the lock for all of them
                held.enter_context(FileLock(out / LOCK, f"the output folder {out}"))
                if remote is not None:
                    _hold_leases(held, remote)
        except ClientError as e:  # another job owns the folder, or it cannot be one: write nothing into it
            print(f"ClientError: {e}", file=sys.stderr)
            return JobResult(EXIT_CLIENT, failure=f"ClientError: {e}")
        held.enter_context(_sigterm_raises())
        if remote is None or not main:
            return _guarded(channels, options, out, hyperparameters_file, overrides or {}, tracker, main)
        return _remote_job(remote, channels, options, hyperparameters_file, overrides or {}, tracker)


def _hold_leases(held: ExitStack, remote: object) -> None:
    """The S3 output and checkpoint prefixes are leased too: the local lock cannot see a job on another host."""
    from openic.storage.s3lease import S3Lease
    from openic.train.remote import RemoteOutputs

    assert isinstance(remote, RemoteOutputs)
    leased: set[str] = set()
    for uri, what in ((remote.output_uri, "the output"), (remote.checkpoint_uri, "the checkpoint location")):
        if uri is not None and uri not in leased:  # one lease when both are the same prefix
            held.enter_context(S3Lease(f"{uri}/{LOCK}", f"{what} {uri}"))
            leased.add(uri)


def _remote_job(remote: object, channels: Mapping[str, object], options: Mapping[str, object],
                file: Path | None, overrides: Mapping[str, object], tracker: Tracker | None) -> JobResult:
    """Rank 0 of a job with S3 outputs: S3's checkpoints first, uploads after each epoch and at the end."""
    from openic.train.remote import RemoteOutputs

    assert isinstance(remote, RemoteOutputs)
    out = remote.output_dir
    try:
        remote.pull()
    except ClientError as e:
        return write_failure(out, EXIT_CLIENT, f"ClientError: {e}")
    job = _guarded(channels, options, out, file, overrides, tracker, True, on_checkpoint=remote.push_checkpoints)
    why = remote.push_all()
    if why is not None:
        if job.exit_code == EXIT_OK:
            return write_failure(out, EXIT_CLIENT, f"ClientError: {why}")
        print(why, file=sys.stderr)
        return job
    if job.exit_code == EXIT_OK and remote.output_uri:
        job.model_uri = f"{remote.output_uri}/{Path(job.result.model_path).name}"  # type: ignore[union-attr]
        print(f"model: {job.model_uri}")
    return job


def is_main_process() -> bool:
    """Whether this process writes the job's files: rank 0 of a distributed job, or a lone process."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return rank.strip() in ("0", "")


def leave_if_finished_peer(code: int) -> int:
    """``code``, except that a non-zero rank whose job succeeded leaves now, without interpreter teardown.

    It wrote nothing and holds nothing, and gloo's C++ destructors can abort during teardown ("terminate called
    without an active exception"): the launcher would report a job in which every rank finished as failed.
    """
    if code != EXIT_OK or "WORLD_SIZE" not in os.environ or is_main_process():
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _guarded(channels: Mapping[str, object], options: TrainConfig | Mapping[str, object], out: Path,
             file: Path | None, overrides: Mapping[str, object], tracker: Tracker | None,
             main: bool = True, on_checkpoint: Callable[[], None] | None = None) -> JobResult:
    try:  # a stale failure file from an earlier run must go; if it cannot (a folder, no permission), say so
        if main:
            (out / FAILURE).unlink(missing_ok=True)
    except OSError as e:
        text = f"ClientError: cannot remove the old {out / FAILURE}: {os_reason(e)}"
        print(text, file=sys.stderr)
        return JobResult(EXIT_CLIENT, failure=text)
    config: TrainConfig | None = None
    try:
        config = options if isinstance(options, TrainConfig) else train_config(options)
        hp = resolve_hyperparameters(file, overrides)
        from openic.train.loop import fit  # torch and the data stack load only once the inputs parsed

        result = fit(hp, dict(channels), config, tracker, on_checkpoint=on_checkpoint)  # type: ignore[arg-type]
    except (ClientError, FileNotFoundError) as e:
        return write_failure(out, EXIT_CLIENT, f"ClientError: {e}", write=main)
    except KeyboardInterrupt:
        print(f"interrupted; {_resume_hint(config, out)}", file=sys.stderr)
        return JobResult(EXIT_INTERRUPTED)
    except Terminated:
        log.warning("Stopped by SIGTERM; %s", _resume_hint(config, out))
        return JobResult(EXIT_TERMINATED)

    except Exception as e:  # noqa: BLE001 - any other failure is ours: report it as SageMaker does
        traceback.print_exc()
        text = f"AlgorithmError: {type(e).__name__}: {e}"
        return write_failure(out, EXIT_ALGORITHM, f"{text}\n\n{traceback.format_exc()}", shown=f"{text} (details in "
                       f"{out / FAILURE})" if main else text, write=main)
    if main:
        print(f"model: {result.model_path}")
    return JobResult(EXIT_OK, result=result)


def train_config(options: Mapping[str, object]) -> TrainConfig:
    """``TrainConfig`` from a mapping; an unknown key is a ``ClientError`` naming it and the valid ones."""
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ClientError(f"unknown run option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(valid))}")
    return TrainConfig(**options)  # type: ignore[arg-type]


def _resume_hint(config: TrainConfig | None, out: Path) -> str:
    """Promise a resume only when one will happen: resuming is on and a completed epoch was saved."""
    last = (config.checkpoint_dir if config is not None and config.checkpoint_dir else out / "checkpoints") / "last"
    if config is not None and config.resume and last.exists():
        return f"{last} holds the last completed epoch: run the same command again to resume"
    if config is not None and not config.resume:
        return "resuming was off (--no-resume), so the same command starts over"
    return "no epoch had completed, so the same command starts over"


def write_failure(out: Path, code: int, text: str, shown: str | None = None, write: bool = True) -> JobResult:
    """Write ``OUTPUT_DIR/failure`` (rank 0 only: one job, one reason); if even that fails (read-only folder),
    say so beside the original reason."""
    try:
        if write:
            atomic_write_text(out / FAILURE, text + "\n")
    except ClientError as e:
        print(f"(could not write the failure file: {e})", file=sys.stderr)
    print(shown or text, file=sys.stderr)
    return JobResult(code, failure=text)
