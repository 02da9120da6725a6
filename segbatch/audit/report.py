"""`segbatch audit`: one pass over a store, then items.csv, summary.json, plots, thumbnails and index.html.

The report folder is built beside its final place and renamed into it, so a
report is whole or absent; --overwrite only ever replaces an earlier report.
A job store of many inputs is audited as one dataset (audit/job.py): the
same report over the items of every complete input, plus a per-input table.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from segbatch import __version__, location
from segbatch.atomic import check_folder_target, replace_folder
from segbatch.audit import plots
from segbatch.audit.html import render_index
from segbatch.audit.items import Item
from segbatch.audit.job import GroupPlaces, JobPlan, plan_job, scan_job
from segbatch.audit.label_errors import WHAT
from segbatch.audit.metrics import bin_edges, class_iou, mean_iou
from segbatch.audit.queue import Entry, is_queue, label_error_why, uncertainty_why, write_queue
from segbatch.audit.scan import AuditOptions, ScanResult, ranking_plan, scan_store
from segbatch.audit.thumbnails import InputReader, Place, write_heat_scale, write_label_error_thumbnails, write_thumbnails
from segbatch.errors import InputError
from segbatch.jobstore import reader_target
from segbatch.store import open_complete_store

REPORT_MARK = "segbatch_audit"  # key of summary.json that says "this folder is an audit report"


def audit(store: location.Location, report: Path, opts: AuditOptions, overwrite: bool = False, group: str | None = None) -> dict[str, Any]:
    """Audit `store` into the folder `report`; returns the summary (also written as summary.json).

    A job store of many inputs is audited whole, or with `group` its group of
    that input alone, as a store of one input.
    """
    write: Callable[[Path], dict[str, Any]]
    job, where = reader_target(store, group, "audit")
    if job is not None:
        if opts.source is not None:
            raise InputError(f"--source names one input's source, and {store} is a job of many inputs: audit one with --group NAME --source ...")
        plan = plan_job(store, opts)  # every input checked (and its truth) before any folder is made
        first = plan.groups[0].root

        def write(folder: Path) -> dict[str, Any]:
            return _write_job(plan, folder, opts)

    else:
        root, attrs = open_complete_store(where, "auditing")
        ranking_plan(root, attrs, opts)  # --rank-by and --min-gap checked before any folder is made
        first = root

        def write(folder: Path) -> dict[str, Any]:
            return _write(root, attrs, where, folder, opts)

    inputs = {"store": store, "--truth": opts.truth, "--source": opts.source}
    check_folder_target(report, overwrite, "audit report", _is_report, inputs)
    if opts.queue is not None:
        if opts.queue_ranking == "label-errors" and opts.truth is None:
            raise InputError("--queue-by label-errors needs --truth: label errors are disagreements with it")
        if opts.queue_ranking == "label-errors" and "confidence" not in first and "probs" not in first:
            raise InputError(f"{store} has neither confidence nor probs, which label errors are weighed by; queue it --queue-by uncertainty")
        if location.inside(opts.queue, report):
            raise InputError(f"--queue {opts.queue} is inside --report {report}; give them folders of their own")
        check_folder_target(opts.queue, overwrite, "relabelling queue", is_queue, inputs | {"report": report})
    building = report.parent / f".{report.name}.building-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        summary = write(building)
        replace_folder(building, report)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def _is_report(folder: Path) -> bool:
    try:
        return REPORT_MARK in json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula (OWASP CSV injection)


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading ' (numbers are never passed here)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def csv_cell(value: Any) -> Any:
    """A row value as its items.csv cell: NaN empty, floats to 6 significant digits, text made safe for spreadsheets."""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    if isinstance(value, str):
        return csv_text(value)
    return value


class _RowWriter:
    """items.csv, written row by row as the scan goes (header from the first row; NaN as an empty cell; text never a formula)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", newline="")
        self.writer: csv.DictWriter[str] | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            self.writer.writeheader()
        self.writer.writerow({k: csv_cell(v) for k, v in row.items()})

    def close(self) -> None:
        self.file.close()


def _write(root: Any, attrs: dict[str, Any], store: location.Location, folder: Path, opts: AuditOptions) -> dict[str, Any]:
    rows = _RowWriter(folder / "items.csv")
    try:
        result = scan_store(root, attrs, opts, rows)
    finally:
        rows.close()
    summary = summarise(result, attrs, store, opts)
    reader = InputReader(attrs, root, opts.source)
    place = Place(root, reader, result.truth.source if result.truth is not None else None)
    thumbs = _pictures(result, summary, folder, opts, lambda item: place)
    summary["input_thumbnails"] = reader.problem or "ok"
    return _save(summary, result, thumbs, folder)


def _write_job(plan: JobPlan, folder: Path, opts: AuditOptions) -> dict[str, Any]:
    """The report of a job: its complete inputs pooled, the per-input table, and the inputs skipped."""
    rows = _RowWriter(folder / "items.csv")
    try:
        result, table = scan_job(plan, opts, rows)
    finally:
        rows.close()
    attrs = {"source": {"path": plan.attrs.get("spec")}, "model": plan.attrs["model"], "samples": plan.attrs.get("samples"), "problems": plan.problems}
    summary = summarise(result, attrs, plan.store, opts)
    summary["job"] = {
        "inputs": len(plan.attrs["inputs"]),
        "audited": len(plan.groups),
        "skipped": plan.skipped,
        "without_truth": plan.truth_missing if opts.truth is not None else None,
    }
    summary["inputs"] = _clean(table)
    places = GroupPlaces(plan)
    thumbs = _pictures(result, summary, folder, opts, places)
    summary["input_thumbnails"] = places.describe()
    return _save(summary, result, thumbs, folder)


def _pictures(result: ScanResult, summary: dict[str, Any], folder: Path, opts: AuditOptions, place: Callable[[Item], Place]) -> list[dict[str, str]]:
    """The plots (named in the summary's files) and the top items' thumbnails."""
    figures = _plots(result, summary, folder)
    summary["files"] = {"items": "items.csv", "summary": "summary.json", "index": "index.html", "plots": figures}
    vmax = summary[result.measure]["p99"] or result.hist_max[result.measure]
    top = [r.item for r in result.top]
    errors = result.truth.label_errors if result.truth is not None else None
    if errors is not None:
        ranked = [item for _, item in errors.ranked()[: opts.top]]
        pictures = write_label_error_thumbnails(
            ranked, folder / "label-errors", place, result.palette, errors, result.measure, len(result.classes), opts.ignore_index
        )
        for entry, pics in zip(summary["truth"]["label_errors"]["ranked"], pictures, strict=True):
            entry["pictures"] = pics
    thumbs = write_thumbnails(top, folder / "thumbs", place, result.palette, result.measure, vmax, len(result.classes), opts.ignore_index)
    if thumbs:
        summary["heat_scale"] = {"file": write_heat_scale(folder / "thumbs", vmax), "max": vmax, "measure": result.measure}
    if opts.queue is not None:
        entries = _queue_entries(result, opts)
        write_queue(opts.queue, entries, place, result.classes, result.palette, result.measure, vmax, str(opts.queue_ranking))
        summary["queue"] = {"folder": str(opts.queue), "items": len(entries), "ranked_by": opts.queue_ranking}
    return thumbs


def _queue_entries(result: ScanResult, opts: AuditOptions) -> list[Entry]:
    """The queue's items in order: the most likely mislabelled (with truth), or the most uncertain, spaced as the report's."""
    errors = result.truth.label_errors if result.truth is not None else None
    if opts.queue_ranking == "label-errors":
        if errors is None:
            return []
        return [Entry(item, score, label_error_why(score)) for score, item in errors.ranked()[: opts.queue_size]]
    return [Entry(r.item, r.score, uncertainty_why(result.measure, r.row)) for r in result.queue]


def _save(summary: dict[str, Any], result: ScanResult, thumbs: list[dict[str, str]], folder: Path) -> dict[str, Any]:
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    (folder / "index.html").write_text(render_index(summary, result, thumbs, summary["files"]["plots"]))
    return summary


def _finite(v: float) -> float | None:
    """JSON has no NaN: a figure that does not exist (no pixels, no truth) is null."""
    return v if math.isfinite(v) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return _finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def quantile_from_histogram(counts: np.ndarray, top: float, q: float) -> float:
    """The q-quantile of values binned in `counts` (metrics.value_bins over [0, top]), to within its bin."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    i = min(int(np.searchsorted(np.cumsum(counts), q * total, side="left")), len(counts) - 1)
    edges = bin_edges(top, len(counts))
    return float((edges[i] + edges[i + 1]) / 2)


def summarise(result: ScanResult, attrs: dict[str, Any], store: location.Location, opts: AuditOptions) -> dict[str, Any]:
    """summary.json: the store's figures, ranking, problems and (with truth) the honesty measures."""
    measures = {}
    for m, counts in result.histograms.items():
        total = counts.sum()
        measures[m] = {
            "mean": result.sums[m] / total if total else float("nan"),
            **{f"p{q}": quantile_from_histogram(counts, result.hist_max[m], q / 100) for q in (50, 90, 95, 99)},
        }
    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = result.class_measure_sum / result.class_pixels
    share = result.class_pixels / max(1, result.pixels)
    classes = [
        {"class": i, "name": n, "pixels": int(result.class_pixels[i]), "share": float(share[i]), f"mean_{result.measure}": float(class_mean[i])}
        for i, n in enumerate(result.classes)
    ]
    summary: dict[str, Any] = {
        REPORT_MARK: __version__,
        "store": location.absolute(store),
        "kind": result.kind,
        "item": result.noun,
        "source": attrs["source"].get("path"),
        "model": {k: attrs["model"].get(k) for k in ("arch", "sha256", "classes", "calibration")},
        "samples": attrs.get("samples"),
        "items": result.items,
        "items_with_pixels": result.items_with_pixels,
        "pixels": result.pixels,
        "measure": result.measure,
        "threshold": result.threshold,
        "threshold_source": result.threshold_source,
        "above_threshold": result.above / result.pixels if result.pixels else float("nan"),
        **measures,
        "classes": classes,
        "ranking": result.ranking,
        "top": [{"rank": k + 1, **r.row} for k, r in enumerate(result.top)],
        "timeline": result.timeline,
        "problems": attrs.get("problems", []),
        "truth": None,
    }
    t = result.truth
    if t is not None:
        conf = t.confusion
        iou = class_iou(conf)
        labelled = int(conf.sum())
        for i, c in enumerate(classes):
            c["iou"] = float(iou[i])
            c["truth_pixels"] = int(conf[i].sum())
        first = next(iter(t.honesty.values()), None)
        auroc = {m: acc.auroc() for m, acc in t.honesty.items()}
        summary["truth"] = {
            "source": t.description,
            "ignore_index": opts.ignore_index,
            "items_with_truth": t.with_truth,
            "items_without_truth": t.without_truth_count,
            "without_truth": t.without_truth,
            "errors": t.errors[:100],
            "pixels": labelled,
            "accuracy": float(np.trace(conf) / labelled) if labelled else float("nan"),
            "miou": mean_iou(conf) if labelled else float("nan"),
            "confusion": conf.tolist(),
            "confidence": t.confidence_source,
            "ece": (first.ece() if first is not None and t.confidence_source else None),
            "reliability": first.reliability() if first is not None and t.confidence_source else [],
            "auroc": auroc,
            "best_measure": best_measure(auroc),
            "accuracy_vs_coverage": {m: acc.accuracy_vs_coverage() for m, acc in t.honesty.items()},
            "label_errors": _label_errors(result, opts.top),
        }
    return cast(dict[str, Any], _clean(summary))


def _label_errors(result: ScanResult, top: int) -> dict[str, Any] | None:
    """summary.json's likely label errors: how they were found, the ranked items, the likely swaps (None: no scores stored)."""
    assert result.truth is not None
    errors = result.truth.label_errors
    if errors is None:
        return None
    ranked = []
    for k, (score, item) in enumerate(errors.ranked()[:top], start=1):
        ranked.append(
            {"rank": k, **({"input": item.group} if item.group is not None else {}), "item": item.index, "name": item.name, "label_issue_score": score}
        )
    return {
        "scores": errors.mode,
        "weighed_by": WHAT[errors.mode],
        "calm_below": errors.calm_below,
        "measure": result.measure,
        "class_thresholds": {name: float(t) if np.isfinite(t) else None for name, t in zip(result.classes, errors.thresholds, strict=True)},
        "suspect_items": errors.suspect_items,
        "suspect_pixels": errors.suspect_pixels,
        "swaps": errors.swap_table(result.classes),
        "ranked": ranked,
    }


def best_measure(auroc: dict[str, float | None]) -> str | None:
    """The measure whose AUROC for errors is highest (the first of equals); None when no measure has one."""
    best: str | None = None
    for m, v in auroc.items():
        if v is not None and math.isfinite(v) and (best is None or v > cast(float, auroc[best])):
            best = m
    return best


def _class_means(summary: dict[str, Any], measure: str) -> np.ndarray:
    return np.array([np.nan if c[f"mean_{measure}"] is None else c[f"mean_{measure}"] for c in summary["classes"]], float)


def _plots(result: ScanResult, summary: dict[str, Any], folder: Path) -> dict[str, str]:
    m = result.measure
    out = {
        "histogram": plots.histogram(folder / "histogram.png", result.histograms[m], result.hist_max[m], m, result.threshold),
        "classes": plots.classes(folder / "classes.png", result.classes, result.palette, result.class_pixels, _class_means(summary, m), m),
    }
    if result.timeline and result.timeline["time"]:
        out["timeline"] = plots.timeline(folder / "timeline.png", result.timeline, m)
    truth = summary["truth"]
    if truth and truth["pixels"]:
        if truth["ece"] is not None:
            out["reliability"] = plots.reliability(folder / "reliability.png", truth["reliability"], truth["ece"])
        out["coverage"] = plots.coverage(folder / "coverage.png", truth["accuracy_vs_coverage"], truth["auroc"], m)
        out["confusion"] = plots.confusion(folder / "confusion.png", np.asarray(truth["confusion"]), result.classes)
    return out
