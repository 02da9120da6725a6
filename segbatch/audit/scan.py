"""The audit's one pass over a store: per-item rows out as they are computed, fixed-size summaries kept.

Memory is bounded whatever the store's size: blocks of whole chunks are read
a few at a time (read-ahead on threads, which decompress while numpy works),
rows go straight to items.csv, the ranking keeps a bounded pool of candidates
(audit/ranking.py), histograms have fixed bins, and a video's timeline is
averaged into at most TIMELINE_POINTS points.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import kinds
from segbatch.audit.items import Block, Item, item_count, item_stats, iter_blocks, squeeze_item
from segbatch.audit.label_errors import CONFIDENCE, PROBS, ClassThresholds, LabelErrors
from segbatch.audit.metrics import HonestyAccumulator, confusion_matrix, mean_iou, value_bins
from segbatch.audit.ranking import CompactRows, DiverseTop, Spacing, spacing_for
from segbatch.audit.truth import TruthSource, labelled_mask, open_truth
from segbatch.errors import DataError, InputError
from segbatch.progress import progress_bar
from segbatch.sampling import sample_values

HIST_BINS = 4096
TIMELINE_POINTS = 2000
READ_AHEAD = 4
THRESHOLD_QUANTILE = 0.9  # default threshold: the store's 90th percentile (sampled), "the most uncertain tenth"
VARIANCE_MAX = 0.25  # the variance of a probability is at most 1/4
MEASURES = ("uncertainty", "entropy", "mutual_information")  # per-pixel measures of how unsure the model is, as the store names them


@dataclass(frozen=True)
class AuditOptions:
    top: int = 20
    threshold: float | None = None  # None: the 90th percentile of the measure over a sample of the store's chunks
    truth: Path | None = None
    ignore_index: int | None = None
    quiet: bool = False
    rank_by: str | None = None  # one of MEASURES; None: uncertainty, or entropy for a store run with --samples 0
    min_gap: float | None = None  # spacing of the ranked items (audit/ranking.py); None: the kind's default
    source: str | None = None  # where the store's input is now, for its thumbnails (None: where the store says it was read)
    queue: Path | None = None  # the relabelling queue's folder (audit/queue.py); None: no queue
    queue_size: int = 50
    queue_by: str | None = None  # "uncertainty" or "label-errors"; None: label-errors with truth, else uncertainty

    @property
    def queue_ranking(self) -> str | None:
        """What orders the queue, or None without one."""
        if self.queue is None:
            return None
        return self.queue_by or ("label-errors" if self.truth is not None else "uncertainty")


def ranking_plan(root: Any, attrs: dict[str, Any], opts: AuditOptions) -> tuple[str, Spacing]:
    """The measure items are ranked by and how far apart the picks are; a measure the store lacks is an InputError."""
    kind = attrs["source"]["kind"]
    if opts.rank_by is None:
        measure = "uncertainty" if "uncertainty" in root else "entropy"
    elif opts.rank_by not in MEASURES:
        raise InputError(f"--rank-by {opts.rank_by}: one of {', '.join(MEASURES)}")
    elif opts.rank_by not in root:
        have = ", ".join(m for m in MEASURES if m in root) or "none"
        how = {"mutual_information": "; a run with --outputs mutual_information writes it", "uncertainty": "; a run with --samples >= 1 writes it"}
        raise InputError(f"--rank-by {opts.rank_by}: the store has no {opts.rank_by} array (it has {have}){how.get(opts.rank_by, '')}")
    else:
        measure = opts.rank_by
    return measure, spacing_for(root, kind, opts.min_gap, opts.top)


@dataclass
class Ranked:
    """An item in the top-K ranking, with what its thumbnails need."""

    score: float
    item: Item
    row: dict[str, Any]


@dataclass
class ScanResult:
    """Everything the report needs besides items.csv (already written)."""

    kind: str
    noun: str
    items: int
    classes: list[str]
    palette: list[list[int]]
    measure: str  # the ranking measure: --rank-by, else "uncertainty", or "entropy" for stores run with --samples 0
    threshold: float
    threshold_source: str
    columns: list[str]
    histograms: dict[str, np.ndarray]  # square-root-spaced bins over [0, hist_max] (metrics.value_bins)
    sums: dict[str, float]
    hist_max: dict[str, float]
    class_pixels: np.ndarray
    class_measure_sum: np.ndarray
    pixels: int = 0
    items_with_pixels: int = 0
    above: int = 0
    top: list[Ranked] = field(default_factory=list)
    queue: list[Ranked] = field(default_factory=list)  # the relabelling queue's picks, when it is ordered by uncertainty
    ranking: dict[str, Any] = field(default_factory=dict)  # how the top was picked (DiverseTop.summary)
    timeline: dict[str, list[float]] | None = None
    truth: TruthSummary | None = None


@dataclass
class TruthSummary:
    """Accumulated comparison with ground truth."""

    description: str
    confusion: np.ndarray
    honesty: dict[str, HonestyAccumulator]
    confidence_source: str | None
    with_truth: int = 0
    without_truth: list[str] = field(default_factory=list)
    without_truth_count: int = 0
    errors: list[str] = field(default_factory=list)
    source: TruthSource | None = None  # None: the items being read have no truth (an input of a job without any)
    label_scores: str | None = None  # what weighs a disagreement (label_errors.PROBS or CONFIDENCE); None: the store has neither
    label_errors: LabelErrors | None = None  # the likely label errors, once the first pass set the class thresholds


def threshold_of(opts: AuditOptions, measure: str, sample: Callable[[], np.ndarray], over: str) -> tuple[float, str]:
    """--threshold, else the THRESHOLD_QUANTILE of `measure` over `sample()` (chunks drawn from `over`), and where it came from."""
    if opts.threshold is not None:
        return float(opts.threshold), "--threshold"
    values = sample()
    threshold = float(np.quantile(values, THRESHOLD_QUANTILE)) if values.size else 0.0
    return threshold, f"{THRESHOLD_QUANTILE:.0%} quantile of {measure} over a sample of {over}"


def new_result(kind: str, model: dict[str, Any], measures: list[str], measure: str, threshold: tuple[float, str], items: int) -> ScanResult:
    """An empty result for `items` items of `kind` by `model`, ready to accumulate them."""
    classes = list(model["classes"])
    k = len(classes)
    return ScanResult(
        kind=kind,
        noun=kinds.kind(kind).noun,
        items=items,
        classes=classes,
        palette=[list(c) for c in model["palette"]],
        measure=measure,
        threshold=threshold[0],
        threshold_source=threshold[1],
        columns=[],
        histograms={m: np.zeros(HIST_BINS, np.int64) for m in measures},
        sums=dict.fromkeys(measures, 0.0),
        hist_max={m: VARIANCE_MAX if m == "uncertainty" else math.log(k) for m in measures},
        class_pixels=np.zeros(k, np.int64),
        class_measure_sum=np.zeros(k, np.float64),
    )


def scan_store(root: Any, attrs: dict[str, Any], opts: AuditOptions, write_row: Callable[[dict[str, Any]], None]) -> ScanResult:
    """Read every item once, writing its row; return the summaries."""
    kind = attrs["source"]["kind"]
    measure, spacing = ranking_plan(root, attrs, opts)
    threshold = threshold_of(opts, measure, lambda: sample_values(root[measure]), "the store's chunks")
    n_items = item_count(root, kind)
    result = new_result(kind, attrs["model"], [m for m in MEASURES if m in root], measure, threshold, n_items)
    result.truth = open_truth_summary(opts, root, attrs, len(result.classes)) if opts.truth else None
    if result.truth is not None:
        source = result.truth.source
        find_label_errors(result, opts, [(root, attrs, lambda: source, n_items, None)])
    timeline = _Timeline(n_items) if kinds.kind(kind).timeline else None
    ranked, packed = DiverseTop(opts.top, spacing), CompactRows()
    queue = DiverseTop(opts.queue_size, spacing) if opts.queue_ranking == "uncertainty" else None
    with progress_bar(n_items, "auditing", result.noun, opts.quiet) as bar:
        scan_items(result, root, attrs, opts, ranked, packed, write_row, bar.update, timeline, queue=queue)
    finish_ranking(result, ranked, packed, queue)
    result.timeline = timeline.points() if timeline is not None else None
    return result


def scan_items(
    result: ScanResult,
    root: Any,
    attrs: dict[str, Any],
    opts: AuditOptions,
    ranked: DiverseTop,
    packed: CompactRows,
    write_row: Callable[[dict[str, Any]], None],
    advance: Callable[[int], Any],
    timeline: _Timeline | None = None,
    group: str | None = None,
    queue: DiverseTop | None = None,
) -> None:
    """Add every item of one store (or one group of a job, named `group`) to `result`, writing its row and offering it to `ranked`."""
    measures = list(result.histograms)
    k = len(result.classes)
    truth = result.truth
    needed = ["labels", *measures]
    if truth is not None:
        needed += [m for m in truth.honesty if m not in needed]
        needed += [a for a in (truth.confidence_source, truth.label_scores) if a and a not in needed]
    for block, arrays in _read_ahead(root, iter_blocks(root, attrs, group), needed):
        if truth is not None and truth.confidence_source == "probs":
            arrays["confidence"] = arrays["probs"].max(axis=-1)
        for item, local in block.items:
            values = {name: squeeze_item(a, local, name) for name, a in arrays.items()}
            row = _item_row(result, item, values, measures, k)
            if truth is not None:
                row |= _truth_row(truth, item, values, k, opts.ignore_index, result.measure)
            if not result.columns:
                result.columns = list(row)
            write_row(row)
            score = row[f"{result.measure}_mean"]
            if row["valid_pixels"] and np.isfinite(score):
                ranked.offer(score, item, packed.pack(row))
                if queue is not None:
                    queue.offer(score, item, packed.pack(row))
            if timeline is not None:
                timeline.add(item, row, result.measure)
            advance(1)


def finish_ranking(result: ScanResult, ranked: DiverseTop, packed: CompactRows, queue: DiverseTop | None = None) -> None:
    """The spaced top-K picks, with their rows, and how they were picked; and the queue's, when uncertainty orders it."""
    picks = ranked.picks()
    result.top = [Ranked(score, item, packed.unpack(row)) for score, item, row in picks]
    result.ranking = {"measure": result.measure, **ranked.summary(len(picks))}
    if queue is not None:
        result.queue = [Ranked(score, item, packed.unpack(row)) for score, item, row in queue.picks()]


def _item_row(result: ScanResult, item: Item, values: dict[str, np.ndarray], measures: list[str], k: int) -> dict[str, Any]:
    """One item's row, and its pixels added to the store-wide histograms and class totals."""
    labels = values["labels"]
    stats = item_stats(labels, {m: values[m] for m in measures}, result.measure, result.threshold, k)
    for m, v in stats.values.items():
        result.histograms[m] += np.bincount(value_bins(v, result.hist_max[m], HIST_BINS), minlength=HIST_BINS)
        result.sums[m] += float(v.sum())
    result.pixels += stats.valid_pixels
    result.items_with_pixels += stats.valid_pixels > 0
    result.above += stats.above
    result.class_pixels += stats.class_pixels
    result.class_measure_sum += np.nan_to_num(stats.class_measure_mean) * stats.class_pixels
    row: dict[str, Any] = {"item": item.index, "name": item.name, **item.meta, "valid_pixels": stats.valid_pixels}
    if item.group is not None:
        row = {"input": item.group, **row}  # a job's items: which input each is of, first
    for m in ("uncertainty", "entropy", *(["mutual_information"] if "mutual_information" in measures else [])):
        mean, p95 = stats.measures.get(m, (float("nan"), float("nan")))
        row[f"{m}_mean"], row[f"{m}_p95"] = mean, p95
    row["above_threshold"] = stats.above_threshold
    for c, name in enumerate(result.classes):
        row[f"pixels_{column_name(name)}"] = int(stats.class_pixels[c])
    for c, name in enumerate(result.classes):
        row[f"{result.measure}_{column_name(name)}"] = float(stats.class_measure_mean[c])
    return row


def column_name(name: str) -> str:
    """A class name as a CSV column suffix: lower case, runs of other characters as one underscore."""
    return "_".join(p for p in "".join(ch if ch.isalnum() else " " for ch in name.lower()).split()) or "class"


def open_truth_summary(opts: AuditOptions, root: Any, attrs: dict[str, Any], k: int) -> TruthSummary:
    assert opts.truth is not None
    source = open_truth(opts.truth, root, attrs)
    return new_truth_summary(root, k, source.description, source)


def new_truth_summary(root: Any, k: int, description: str, source: TruthSource | None) -> TruthSummary:
    """Empty truth figures for stores laid out like `root` (its measures, its confidence or probs array)."""
    measures = [m for m in MEASURES if m in root]
    honesty = {m: HonestyAccumulator(VARIANCE_MAX if m == "uncertainty" else math.log(k)) for m in measures}
    confidence = "confidence" if "confidence" in root else "probs" if "probs" in root else None
    scores = PROBS if PROBS in root else CONFIDENCE if CONFIDENCE in root else None
    return TruthSummary(description, np.zeros((k, k), np.int64), honesty, confidence, source=source, label_scores=scores)


MAX_LISTED = 1000  # items without truth named in summary.json (items.csv has every one)


LabelInput = tuple[Any, dict[str, Any], Callable[[], TruthSource | None], int, str | None]  # root, attrs, its truth, items, group


def find_label_errors(result: ScanResult, opts: AuditOptions, inputs: Sequence[LabelInput]) -> None:
    """The first pass: the label-error class thresholds over every input with truth (a store, or a job's groups pooled), then
    the second pass's accounting ready (`truth.label_errors`); nothing when the store has neither confidence nor probs.
    Leaves `truth.source` at the last input's truth."""
    truth = result.truth
    if truth is None or truth.label_scores is None:
        return
    thresholds = ClassThresholds(len(result.classes), truth.label_scores)
    with progress_bar(sum(i[3] for i in inputs), "label thresholds", result.noun, opts.quiet) as bar:
        for root, attrs, open_truth_of, items, group in inputs:
            truth.source = open_truth_of()
            if truth.source is None:
                bar.update(items)
            else:
                _add_thresholds(thresholds, root, attrs, truth.source, opts.ignore_index, bar.update, group)
    keep = max(opts.top, opts.queue_size if opts.queue_ranking == "label-errors" else 0)  # the report's, or the queue's if longer
    truth.label_errors = LabelErrors(thresholds.thresholds(), thresholds.mode, result.threshold, keep)


def _add_thresholds(
    thresholds: ClassThresholds,
    root: Any,
    attrs: dict[str, Any],
    source: TruthSource,
    ignore_index: int | None,
    advance: Callable[[int], Any],
    group: str | None,
) -> None:
    """One store's (or job group's) share of the first pass: its labels, scores and truth, item by item."""
    k, scores_of = len(thresholds.sums), thresholds.mode
    for block, arrays in _read_ahead(root, iter_blocks(root, attrs, group), ["labels", scores_of]):
        for item, local in block.items:
            try:
                t = source.read(item)
            except DataError:
                t = None  # said once, by the second pass
            if t is not None:
                labels = squeeze_item(arrays["labels"], local)
                ok = labelled_mask(labels, t, k, ignore_index)
                scores = squeeze_item(arrays[scores_of], local, scores_of)
                thresholds.add(labels[ok].astype(np.int64), t[ok].astype(np.int64), scores[ok].astype(np.float64))
            advance(1)


def _truth_row(truth: TruthSummary, item: Item, values: dict[str, np.ndarray], k: int, ignore_index: int | None, measure: str) -> dict[str, Any]:
    blank = {"truth": "none", "truth_pixels": 0, "accuracy": float("nan"), "miou": float("nan")}
    if truth.label_errors is not None:
        blank |= {"suspect_pixels": 0, "suspect_share": float("nan"), "label_issue_score": float("nan")}
    if truth.source is None:
        return blank  # an input of a job that has no truth: counted once, as an input, not item by item
    try:
        t = truth.source.read(item)
    except DataError as exc:
        truth.errors.append(str(exc) if item.group is None else f"input {item.group}: {exc}")
        t = None
        blank["truth"] = "error"
    if t is None:
        truth.without_truth_count += 1
        if len(truth.without_truth) < MAX_LISTED:
            truth.without_truth.append(item.name if item.group is None else f"{item.group}: {item.name}")
        return blank
    truth.with_truth += 1
    labels = values["labels"]
    ok = labelled_mask(labels, t, k, ignore_index)
    pred, gt = labels[ok].astype(np.int64), t[ok]
    conf = confusion_matrix(pred, gt, k)
    truth.confusion += conf
    correct = pred == gt
    confidence = values.get("confidence")
    for k, (m, acc) in enumerate(truth.honesty.items()):
        # the reliability diagram does not depend on the measure: the first accumulator alone keeps it
        acc.update(values[m][ok], confidence[ok] if k == 0 and confidence is not None else None, correct)
    n = int(ok.sum())
    row = {"truth": "yes", "truth_pixels": n, "accuracy": float(correct.mean()) if n else float("nan"), "miou": mean_iou(conf) if n else float("nan")}
    errors = truth.label_errors
    if errors is not None:
        scores = values[errors.mode][ok].astype(np.float64)
        row |= errors.add(item, pred, gt.astype(np.int64), scores, values[measure][ok])
    return row


class _Timeline:
    """A video's per-frame figures averaged into at most TIMELINE_POINTS consecutive-frame points."""

    def __init__(self, frames: int) -> None:
        self.step = max(1, -(-frames // TIMELINE_POINTS))
        points = -(-frames // self.step)
        self.n = np.zeros(points, np.int64)
        self.time = np.zeros(points)
        self.frame = np.zeros(points)
        self.mean = np.zeros(points)
        self.p95 = np.zeros(points)
        self.above = np.zeros(points)

    def add(self, item: Item, row: dict[str, Any], measure: str) -> None:
        if not row["valid_pixels"]:
            return
        b = item.index // self.step
        self.n[b] += 1
        self.time[b] += row["time"]
        self.frame[b] += row["frame"]
        self.mean[b] += row[f"{measure}_mean"]
        self.p95[b] += row[f"{measure}_p95"]
        self.above[b] += row["above_threshold"]

    def points(self) -> dict[str, list[float]]:
        keep = self.n > 0
        n = self.n[keep]
        return {
            "frames_per_point": [float(self.step)],
            "time": (self.time[keep] / n).tolist(),
            "frame": (self.frame[keep] / n).tolist(),
            "mean": (self.mean[keep] / n).tolist(),
            "p95": (self.p95[keep] / n).tolist(),
            "above_threshold": (self.above[keep] / n).tolist(),
        }


def _read_ahead(root: Any, blocks: Iterator[Block], names: list[str]) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
    """Blocks with their arrays, read READ_AHEAD blocks ahead on two threads (bounded: never more in memory)."""

    def read(block: Block) -> dict[str, np.ndarray]:
        return {name: np.asarray(root[name][block.region]) for name in names}

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[tuple[Block, Any]] = deque()
        for block in blocks:
            pending.append((block, pool.submit(read, block)))
            if len(pending) >= READ_AHEAD:
                b, fut = pending.popleft()
                yield b, fut.result()
        while pending:
            b, fut = pending.popleft()
            yield b, fut.result()
