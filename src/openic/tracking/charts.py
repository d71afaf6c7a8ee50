"""Charts and summaries drawn from a run's ``metrics.jsonl`` (the file is the single source; nothing else is read).

matplotlib is an optional extra (``openic[plots]``); it is imported only inside :func:`plot_run`, and through its
object API on the Agg canvas, so no GUI backend or pyplot global state is involved.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openic.errors import ClientError
from openic.tracking.base import METRICS_JSONL, metrics_path, per_epoch, read_metrics

_TOPK = re.compile(r"(train|validation):top_k_accuracy_(\d+)")
_COLORS = {"train": "#1f77b4", "validation": "#d62728"}


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"], float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Headline numbers of a run: epochs, best/last validation accuracy, last train accuracy, times.

    ``wall_time_s`` spans the first to the last logged record (it includes pauses of a resumed run);
    ``train_time_s`` sums the logged ``epoch_time`` values when the trainer logs them.
    """
    path = metrics_path(Path(run_dir))
    records = read_metrics(path)
    rows = per_epoch(records)
    run = path.parent
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    summary: dict[str, Any] = {
        "name": run.name, "path": str(run), "epochs": len(rows), "last_epoch": rows[-1]["epoch"] if rows else None,
        "best_validation_accuracy": None, "best_epoch": None, "last_validation_accuracy": None,
        "last_train_accuracy": None, "wall_time_s": round(max(times) - min(times), 3) if times else None,
        "train_time_s": None, "has_model": (run / "model.tar.gz").is_file(),
    }
    epochs, val = _series(rows, "validation:accuracy")
    if val:
        best = max(range(len(val)), key=lambda i: (val[i], -i))  # first epoch reaching the maximum, as SageMaker keeps
        summary.update(best_validation_accuracy=val[best], best_epoch=epochs[best], last_validation_accuracy=val[-1])
    _, train = _series(rows, "train:accuracy")
    if train:
        summary["last_train_accuracy"] = train[-1]
    _, epoch_times = _series(rows, "epoch_time")
    if epoch_times:
        summary["train_time_s"] = round(sum(epoch_times), 3)
    return summary


def find_runs(dirs: Iterable[Path]) -> list[Path]:
    """Run directories (those holding ``metrics.jsonl``) at or below each of ``dirs``, skipping hidden folders."""
    found: list[Path] = []
    for top in dirs:
        top = Path(top)
        if not top.is_dir():
            raise FileNotFoundError(f"not a directory: {top}")
        for root, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            if METRICS_JSONL in files:
                found.append(Path(root))
    return sorted(dict.fromkeys(found))


def _import_figure() -> Any:
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ClientError(f"charts need matplotlib, which is not installed ({e}); "
                          "install it with: pip install openic[plots]") from e
    return Figure, MaxNLocator


def _plot_lines(ax: Any, rows: list[dict[str, Any]], keys: Iterable[tuple[str, str, dict[str, Any]]]) -> bool:
    drawn = False
    for key, label, style in keys:
        x, y = _series(rows, key)
        if y:
            ax.plot(x, y, label=label, marker="o" if len(y) <= 40 else None, markersize=3, **style)
            drawn = True
    return drawn


def _accuracy_keys(rows: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    keys = [(f"{s}:accuracy", f"{s} accuracy", {"color": _COLORS[s]}) for s in ("train", "validation")]
    topk = sorted({k for r in rows for k in r if _TOPK.fullmatch(k)})
    for key in topk:
        split, k = _TOPK.fullmatch(key).groups()  # type: ignore[union-attr]
        keys.append((key, f"{split} top-{k} accuracy", {"color": _COLORS[split], "linestyle": "--", "alpha": 0.7}))
    return keys


def _finish(ax: Any, drawn: bool, title: str, ylabel: str, locator: Any) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(locator(integer=True))
    ax.grid(True, alpha=0.3)
    if drawn:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_run(run_dir_or_metrics_jsonl: Path, out_png: Path | None = None) -> Path:
    """Draw accuracy (train vs validation, top-k), loss, learning rate and throughput per epoch into a PNG.

    Returns the PNG path: ``out_png``, or ``metrics.png`` beside ``metrics.jsonl``.
    """
    path = metrics_path(Path(run_dir_or_metrics_jsonl))
    rows = per_epoch(read_metrics(path))
    if not rows:
        raise ClientError(f"{path} holds no metrics yet; nothing to plot")
    figure_cls, locator = _import_figure()
    out = Path(out_png) if out_png is not None else path.parent / "metrics.png"
    fig = figure_cls(figsize=(12, 8), dpi=100, layout="constrained")
    (acc, loss), (lr, speed) = fig.subplots(2, 2)
    drawn = _plot_lines(acc, rows, _accuracy_keys(rows))
    summary = summarize_run(path)
    if summary["best_epoch"] is not None:
        acc.scatter([summary["best_epoch"]], [summary["best_validation_accuracy"]], s=120, marker="*",
                    color="gold", edgecolor="black", zorder=5, label=f"best {summary['best_validation_accuracy']:.4f}")
        acc.legend(loc="best", fontsize="small")
    acc.set_ylim(0, 1.02)
    _finish(acc, drawn, "Accuracy", "accuracy", locator)
    drawn = _plot_lines(loss, rows, [(f"{s}:loss", f"{s} loss", {"color": _COLORS[s]})
                                     for s in ("train", "validation")])
    losses = [v for s in ("train", "validation") for v in _series(rows, f"{s}:loss")[1]]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:  # an early blow-up would flatten the rest
        loss.set_yscale("log")
    _finish(loss, drawn, "Loss", "cross-entropy", locator)
    drawn = _plot_lines(lr, rows, [("learning_rate", "learning rate", {"color": "#2ca02c"})])
    _, rates = _series(rows, "learning_rate")
    if rates and min(rates) > 0 and max(rates) / min(rates) > 10:
        lr.set_yscale("log")
    _finish(lr, drawn, "Learning rate (end of epoch)", "learning rate", locator)
    drawn = _plot_lines(speed, rows, [("samples_per_sec", "training throughput", {"color": "#9467bd"})])
    _, speeds = _series(rows, "samples_per_sec")
    if speeds:
        speed.set_ylim(0, max(speeds) * 1.25 or 1.0)  # from zero, so jitter does not look like a collapse
    _finish(speed, drawn, "Throughput", "samples / second", locator)
    title = f"{path.parent.name}: {len(rows)} epochs"
    if summary["best_epoch"] is not None:
        best, epoch = summary["best_validation_accuracy"], summary["best_epoch"]
        title += f", best validation accuracy {best:.4f} at epoch {epoch}"
    fig.suptitle(title)
    return _save(fig, out)


def plot_compare(runs: list[tuple[str, Path]], out_png: Path) -> Path:
    """Several runs on one chart, labelled by name: validation and train accuracy, and loss, per epoch."""
    if len(runs) < 2:
        raise ClientError(f"comparing needs two or more runs, got {len(runs)}")
    figure_cls, locator = _import_figure()
    fig = figure_cls(figsize=(14, 5), dpi=100, layout="constrained")
    val, train, loss = fig.subplots(1, 3)
    for i, (label, run) in enumerate(runs):
        rows = per_epoch(read_metrics(metrics_path(Path(run))))
        color = f"C{i % 10}"
        _plot_lines(val, rows, [("validation:accuracy", label, {"color": color})])
        _plot_lines(train, rows, [("train:accuracy", label, {"color": color})])
        _plot_lines(loss, rows, [("validation:loss", f"{label} validation", {"color": color}),
                                 ("train:loss", f"{label} train", {"color": color, "linestyle": "--"})])
    for ax, title, ylabel in ((val, "Validation accuracy", "accuracy"), (train, "Train accuracy", "accuracy"),
                              (loss, "Loss", "cross-entropy")):
        _finish(ax, True, title, ylabel, locator)
    val.set_ylim(0, 1.02)
    train.set_ylim(0, 1.02)
    fig.suptitle(f"{len(runs)} runs: {', '.join(label for label, _ in runs)}")
    return _save(fig, Path(out_png))


def _save(fig: Any, out: Path) -> Path:
    """Write the PNG atomically (a viewer never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
