"""openic plot RUN_DIR / openic runs [DIR ...]: look at training runs from their metrics.jsonl.

``plot`` draws accuracy (train vs validation, top-k), loss, learning rate and throughput per epoch to a PNG.
``runs`` is the run browser: every folder under DIR holding a metrics.jsonl, one line each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from openic.errors import ClientError
from openic.tracking.charts import find_runs, plot_compare, plot_run, summarize_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a run's accuracy, loss, learning rate and throughput to a PNG; several "
                       "runs or jobs side by side", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a training output folder (or its metrics.jsonl), or a job name from `openic jobs list`")
    p.add_argument("--out", type=Path, metavar="PNG",
                   help="where to write the chart (default: RUN/metrics.png; several runs: ./comparison.png)")
    p.set_defaults(func=run_plot)

    r = sub.add_parser("runs", help="list the training runs found under folders (epochs, accuracy, time)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dirs", type=Path, nargs="*", default=[Path(".")], metavar="DIR",
                   help="folders searched recursively for runs (default: the current folder)")
    r.add_argument("--json", action="store_true", help="print the summaries as JSON instead of a table")
    r.set_defaults(func=run_runs)


def _resolve_run(name: str) -> tuple[str, Path]:
    """A folder or metrics file as given, else a job of the SDK's job store (labelled by the job's name)."""
    path = Path(name)
    if path.exists():
        return (path.parent.name if path.is_file() else path.name) or str(path), path
    from openic.sdk.jobs import check_job_name, load_job

    try:
        check_job_name(name)
    except ClientError:
        raise ClientError(f"{name} is neither a run folder (no metrics.jsonl there) nor a job name") from None
    return name, Path(load_job(name)["OutputDir"])


def run_plot(args: argparse.Namespace) -> int:
    runs = [_resolve_run(r) for r in args.runs]
    if len(runs) == 1:
        print(plot_run(runs[0][1], args.out))
    else:
        print(plot_compare(runs, args.out or Path("comparison.png")))
    return 0


def _fmt_acc(value: float | None, epoch: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" (epoch {epoch})" if epoch is not None else "")


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def format_table(summaries: list[dict[str, Any]]) -> str:
    """Aligned text table, one run per line."""
    header = ("RUN", "EPOCHS", "BEST VAL ACC", "LAST VAL ACC", "LAST TRAIN ACC", "WALL TIME", "MODEL")
    rows = [(s["path"], str(s["epochs"]), _fmt_acc(s["best_validation_accuracy"], s["best_epoch"]),
             _fmt_acc(s["last_validation_accuracy"]), _fmt_acc(s["last_train_accuracy"]), _fmt_time(s["wall_time_s"]),
             "yes" if s["has_model"] else "no") for s in summaries]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def run_runs(args: argparse.Namespace) -> int:
    summaries = [summarize_run(run) for run in find_runs(args.dirs)]
    if args.json:
        print(json.dumps(summaries, indent=2))
    elif summaries:
        print(format_table(summaries))
    else:
        print(f"no runs (folders with metrics.jsonl) under {', '.join(str(d) for d in args.dirs)}")
    return 0
