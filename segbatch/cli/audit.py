"""`segbatch audit`: where a store's model is unsure, and (with truth) whether its uncertainty is honest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segbatch.cli.config import config_opt
from segbatch.cli.options import LOCATION, SOURCE_HELP, overwrite_opt, path_type, quiet_opt


@click.command()
@click.argument("store", type=LOCATION)
@click.option("--report", type=path_type(), required=True, help="Folder to write: index.html, items.csv, summary.json, plots.")
@click.option(
    "--truth",
    type=path_type(),
    help="Ground truth: a folder of class-index masks (images: by relative path or stem; video: by frame number), a label raster, or a .npy/Zarr array. "
    "A job of many inputs: a folder with one such entry per input name (NAME/ or NAME.tif), or a manifest of NAME PATH lines.",
)
@click.option("--group", metavar="NAME", help="A job of many inputs: audit the group of input NAME alone (default: every complete input together).")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Most uncertain items shown with thumbnails.")
@click.option(
    "--rank-by",
    type=click.Choice(["uncertainty", "entropy", "mutual_information"]),
    help="Measure that ranks the items (and sets the threshold, plots and heat maps); default: uncertainty, entropy for a --samples 0 store.",
)
@click.option(
    "--min-gap",
    type=click.FloatRange(min=0),
    help="Spacing of the ranked items: video, seconds between picks (default 1); raster, no two picks within this many tiles "
    "(default 1: no neighbours); 0: plain top-K.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(min=0),
    help="Value of the ranking measure above which a pixel counts as unsure (default: the store's 90th percentile, sampled).",
)
@click.option("--source", type=LOCATION, help=f"{SOURCE_HELP} For the input thumbnails.")
@click.option(
    "--queue",
    type=path_type(),
    help="Folder to write the relabelling queue to: the items to look at first, with the model's masks, as FiftyOne "
    "(image segmentation directory) and CVAT (Segmentation mask 1.1) import them, and a manifest.csv.",
)
@click.option("--queue-size", type=click.IntRange(min=1), default=50, show_default=True, help="Items in the relabelling queue.")
@click.option(
    "--queue-by",
    type=click.Choice(["uncertainty", "label-errors"]),
    help="What orders the queue: the most uncertain items (spaced as the report's), or the most likely mislabelled "
    "(needs --truth). Default: label-errors with --truth, else uncertainty.",
)
@click.option("--ignore-index", type=int, help="A truth value to ignore (values outside the model's classes are always ignored).")
@overwrite_opt
@config_opt
@quiet_opt
def audit(
    store: Path | str,
    report: Path,
    truth: Path | None,
    group: str | None,
    top: int,
    rank_by: str | None,
    min_gap: float | None,
    threshold: float | None,
    source: Path | str | None,
    queue: Path | None,
    queue_size: int,
    queue_by: str | None,
    ignore_index: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Audit STORE: per-item uncertainty, the most uncertain items, and with --truth IoU, AUROC, calibration (ECE) and coverage.

    A job store of many inputs is audited as one dataset: items.csv names each item's input, the ranking and plots
    span every input, and index.html has a table of the inputs, least sure first.
    """
    from segbatch.audit.report import audit as run_audit
    from segbatch.audit.scan import AuditOptions

    opts = AuditOptions(
        top=top,
        threshold=threshold,
        truth=truth,
        ignore_index=ignore_index,
        quiet=quiet,
        rank_by=rank_by,
        min_gap=min_gap,
        source=None if source is None else str(source),
        queue=queue,
        queue_size=queue_size,
        queue_by=queue_by,
    )
    summary = run_audit(store, report, opts, overwrite, group)
    m = summary["measure"]
    job = summary.get("job")
    of = f" of {job['audited']} inputs" if job else ""
    line = f"audited {summary['items']} {summary['item']}s{of} ({summary['pixels']:,} pixels): mean {m} {_fmt(summary[m]['mean'])}"
    if job:
        _job_warnings(job, truth)
    if summary.get("input_thumbnails", "ok") != "ok":
        click.echo(f"warning: {summary['input_thumbnails']}", err=True)
    t = summary["truth"]
    if t:
        auroc = t["auroc"].get(m)
        line += f"; mIoU {_fmt(t['miou'])}, AUROC {_fmt(auroc)}, ECE {_fmt(t['ece'])}"
        best = t.get("best_measure")
        if best is not None and best != m:
            line += f"; {best} finds errors better (AUROC {_fmt(t['auroc'][best])}: --rank-by {best})"
        if t["items_without_truth"]:
            click.echo(f"warning: {t['items_without_truth']} {summary['item']}(s) have no truth (listed in items.csv and summary.json)", err=True)
    click.echo(f"{line} -> {report / 'index.html'}", err=True)
    if "queue" in summary:
        q = summary["queue"]
        click.echo(f"queued {q['items']} {summary['item']}s to relabel, by {q['ranked_by']} -> {q['folder']}", err=True)


def _job_warnings(job: dict[str, Any], truth: Path | None) -> None:
    """One line for the inputs skipped, one for the inputs audited without truth."""
    from segbatch.audit.job import skipped_line

    if job["skipped"]:
        click.echo(f"warning: skipped {len(job['skipped'])} input(s) without complete results: {skipped_line(job['skipped'])}", err=True)
    missing = job.get("without_truth") or []
    if missing:
        click.echo(f"warning: {len(missing)} of {job['audited']} inputs have no truth in {truth}; audited without it (listed in summary.json)", err=True)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
