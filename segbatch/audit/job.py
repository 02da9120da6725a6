"""The audit of a job store of many inputs: every complete group in one pass, pooled as if their items were one store.

Groups are planned first (which are complete, the ranking measure and each
one's spacing, how many items; each group opened, its ledger and truth checked
once, its handle kept), then read one after the other with the same
per-store scan (audit/scan.py), so memory is that of one group's blocks plus
fixed-size summaries and a few numbers per input. The histograms, class
totals, truth figures and top-K ranking run across the groups; each input's
share of them is kept for the per-input table. A failed or unfinished input is
skipped and named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from segbatch.audit.items import Item, item_count
from segbatch.audit.metrics import HonestyAccumulator, mean_iou
from segbatch.audit.ranking import CompactRows, DiverseTop, Spacing
from segbatch.audit.scan import (
    MEASURES,
    AuditOptions,
    ScanResult,
    find_label_errors,
    finish_ranking,
    new_result,
    new_truth_summary,
    ranking_plan,
    scan_items,
    threshold_of,
)
from segbatch.audit.thumbnails import InputReader, Place
from segbatch.audit.truth import TruthSource, open_truth, truth_per_input
from segbatch.errors import InputError, StoreError
from segbatch.jobstore import READ_THREADS, group_location, job_attrs, live_inputs
from segbatch.location import Location
from segbatch.progress import progress_bar
from segbatch.sampling import chunk_count, sample_values
from segbatch.store import open_complete_store, open_store

SAMPLE_CHUNKS = 16  # chunks the default threshold is sampled from, spread over the job's inputs (as sampling.sample_values does a store's)
MAX_PROBLEMS = 1000  # the inputs' problems listed in summary.json (the per-input table counts every one)


@dataclass(frozen=True)
class GroupPlan:
    """A complete input to audit: its group (opened and checked once), its items, its ranking and what the threshold may sample of it.

    The group's root handle, attributes and truth source are kept (small: no
    arrays are read into memory), so the scan and the thumbnails reuse them.
    """

    name: str
    where: Location
    root: Any  # the group's store, opened (and its ledger checked) by plan_job
    attrs: dict[str, Any]  # its checked `segbatch` attributes
    items: int
    measure: str  # the ranking measure (ranking_plan's choice)
    spacing: Spacing
    chunks: int  # the chunks sampling.sample_values spreads its sample over
    truth: Path | None  # checked against the group when planned
    measures: tuple[str, ...]  # the measures its store has (a job's groups share one configuration, hence one set)

    def open_truth(self) -> TruthSource | None:
        """Its truth, opened when it is read and not kept: a memory-mapped .npy holds a file open, and a job may have thousands."""
        return open_truth(self.truth, self.root, self.attrs) if self.truth is not None else None


@dataclass
class JobPlan:
    """What the audit of a job reads: the job's attributes, the groups to audit in order, and the inputs it skips."""

    store: Location
    attrs: dict[str, Any]
    groups: list[GroupPlan]
    skipped: list[dict[str, Any]]
    problems: list[dict[str, Any]]  # the inputs' problems, each with its input, in the groups' order (at most MAX_PROBLEMS)

    @property
    def measure(self) -> str:
        """The ranking measure: the groups share their measures, hence ranking_plan's choice."""
        return self.groups[0].measure

    @property
    def measures(self) -> list[str]:
        """The measures the inputs' stores have (one set, checked by plan_job)."""
        return list(self.groups[0].measures)

    @property
    def truth_missing(self) -> list[str]:
        """The audited inputs that have no truth (read under --truth only: without it, that is every input)."""
        return [g.name for g in self.groups if g.truth is None]

    @property
    def spacing(self) -> Spacing:
        """The spacing the ranking pool is sized by: the inputs' gap, and the largest neighbourhood of any of them."""
        return replace(self.groups[0].spacing, neighbourhood=max(g.spacing.neighbourhood for g in self.groups))


def plan_job(store: Location, opts: AuditOptions) -> JobPlan:
    """The job's complete inputs, each checked as a store to audit (and its truth, with --truth) before any is read."""
    attrs = job_attrs(open_store(store))
    inputs = live_inputs(store, attrs)
    truths = truth_per_input(opts.truth, [i["name"] for i in inputs]) if opts.truth is not None else {}
    skipped = [{"input": i["name"], "status": i["status"], "error": i.get("error")} for i in inputs if i["status"] != "complete"]
    complete = [i["name"] for i in inputs if i["status"] == "complete"]

    def plan(name: str) -> GroupPlan | dict[str, Any]:
        where = group_location(store, name)
        try:
            root, group = open_complete_store(where, "auditing")
        except (InputError, StoreError) as exc:
            return {"input": name, "status": "unreadable", "error": str(exc)}
        truth = truths.get(name)
        try:
            measure, spacing = ranking_plan(root, group, opts)
            if truth is not None:
                open_truth(truth, root, group)  # a wrong truth stops the audit before anything is read
        except InputError as exc:
            raise InputError(f"input {name}: {exc}") from None
        measures = tuple(m for m in MEASURES if m in root)
        items = item_count(root, group["source"]["kind"])
        return GroupPlan(name, where, root, group, items, measure, spacing, chunk_count(root[measure]), truth, measures)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        planned = list(pool.map(plan, complete))
    groups = [p for p in planned if isinstance(p, GroupPlan)]
    skipped += [p for p in planned if not isinstance(p, GroupPlan)]
    if not groups:
        reasons = "; ".join(f"{s['input']}: {s['status']}" for s in skipped[:5])
        raise InputError(f"{store}: no input has complete results to audit ({reasons})")
    odd = next((g for g in groups if g.measures != groups[0].measures), None)
    if odd is not None:
        have, want = ", ".join(odd.measures), ", ".join(groups[0].measures)
        raise StoreError(f"input {odd.name} has the arrays {have} but {groups[0].name} has {want}; the job was altered")
    problems = list(islice(({"input": g.name, **p} for g in groups for p in (g.attrs.get("problems") or [])), MAX_PROBLEMS))
    return JobPlan(store, attrs, groups, skipped, problems)


def job_threshold(plan: JobPlan, opts: AuditOptions) -> tuple[float, str]:
    """The threshold of the whole job: --threshold, or the quantile over SAMPLE_CHUNKS chunks spread over every input's chunks."""

    def sample() -> np.ndarray:
        ends = np.cumsum([g.chunks for g in plan.groups])
        picks = np.unique(np.linspace(0, max(0, int(ends[-1]) - 1), SAMPLE_CHUNKS).astype(np.int64))
        per_group = np.bincount(np.searchsorted(ends, picks, side="right"), minlength=len(plan.groups))
        values = [sample_values(g.root[plan.measure], int(n)) for g, n in zip(plan.groups, per_group) if n]
        return np.concatenate(values) if values else np.zeros(0, np.float32)

    return threshold_of(opts, plan.measure, sample, f"the job's chunks ({SAMPLE_CHUNKS} spread over its inputs)")


class _InputRows:
    """items.csv's writer, counting what the per-input table needs of one input's rows on the way."""

    def __init__(self, write_row: Callable[[dict[str, Any]], None], measure: str) -> None:
        self.write_row = write_row
        self.key = f"{measure}_mean"
        self.items = 0
        self.top: tuple[float, str] | None = None  # the input's least sure item: its score and name

    def __call__(self, row: dict[str, Any]) -> None:
        self.write_row(row)
        self.items += 1
        score = row[self.key]
        if row["valid_pixels"] and np.isfinite(score) and (self.top is None or score > self.top[0]):
            self.top = (float(score), row["name"])


@dataclass
class _Before:
    """The pooled figures before an input is read: what it adds is the difference."""

    pixels: int
    items_with_pixels: int
    above: int
    sum: float
    confusion: np.ndarray | None
    honesty: HonestyAccumulator | None
    with_truth: int
    without_truth: int

    @classmethod
    def of(cls, result: ScanResult) -> _Before:
        t = result.truth
        first = next(iter(t.honesty.values()), None) if t is not None else None
        return cls(
            result.pixels,
            result.items_with_pixels,
            result.above,
            result.sums[result.measure],
            t.confusion.copy() if t is not None else None,
            first.since(None) if first is not None else None,
            t.with_truth if t is not None else 0,
            t.without_truth_count if t is not None else 0,
        )


def scan_job(plan: JobPlan, opts: AuditOptions, write_row: Callable[[dict[str, Any]], None]) -> tuple[ScanResult, list[dict[str, Any]]]:
    """Read every planned group once, in the job's order, pooling them; returns the result and the per-input table."""
    attrs = plan.attrs
    threshold = job_threshold(plan, opts)
    total = sum(g.items for g in plan.groups)
    result = new_result(attrs["input_kind"], attrs["model"], plan.measures, plan.measure, threshold, total)
    ranked, packed = DiverseTop(opts.top, plan.spacing), CompactRows()
    queue = DiverseTop(opts.queue_size, plan.spacing) if opts.queue_ranking == "uncertainty" else None
    if opts.truth is not None:
        described = f"per input from {opts.truth}: {len(plan.groups) - len(plan.truth_missing)} of {len(plan.groups)} inputs"
        result.truth = new_truth_summary(plan.groups[0].root, len(result.classes), described, None)
        find_label_errors(result, opts, [(g.root, g.attrs, g.open_truth, g.items, g.name) for g in plan.groups])
        result.truth.source = None
    table = []
    with progress_bar(total, "auditing", result.noun, opts.quiet) as bar:
        for g in plan.groups:
            if result.truth is not None:
                result.truth.source = g.open_truth()
            before = _Before.of(result)
            rows = _InputRows(write_row, plan.measure)
            ranked.enter(g.spacing)
            if queue is not None:
                queue.enter(g.spacing)
            scan_items(result, g.root, g.attrs, opts, ranked, packed, rows, bar.update, group=g.name, queue=queue)
            table.append(_input_figures(result, before, g, rows))
    finish_ranking(result, ranked, packed, queue)
    result.ranking["spacing"] = f"{result.ranking['spacing']} within an input" if result.ranking["spacing"] != "none" else "none"
    if result.truth is not None:
        result.truth.source = None
    return result, sorted(table, key=lambda row: _least_sure_first(row, result.measure))


def _input_figures(result: ScanResult, before: _Before, g: GroupPlan, rows: _InputRows) -> dict[str, Any]:
    """One row of the per-input table: what reading input `g` added to the pooled figures."""
    pixels = result.pixels - before.pixels
    row: dict[str, Any] = {
        "input": g.name,
        "items": rows.items,
        "items_with_pixels": result.items_with_pixels - before.items_with_pixels,
        "pixels": pixels,
        f"{result.measure}_mean": (result.sums[result.measure] - before.sum) / pixels if pixels else float("nan"),
        "above_threshold": (result.above - before.above) / pixels if pixels else float("nan"),
        "least_sure_item": rows.top[1] if rows.top is not None else None,
        f"least_sure_{result.measure}_mean": rows.top[0] if rows.top is not None else float("nan"),
        "problems": len(g.attrs.get("problems") or []),
    }
    t = result.truth
    if t is not None and before.confusion is not None:
        conf = t.confusion - before.confusion
        labelled = int(conf.sum())
        first = next(iter(t.honesty.values()), None)
        ece = first.since(before.honesty).ece() if first is not None and t.confidence_source else None
        row |= {
            "truth": str(g.truth) if g.truth is not None else None,
            "items_with_truth": t.with_truth - before.with_truth,
            "items_without_truth": t.without_truth_count - before.without_truth if g.truth is not None else rows.items,
            "truth_pixels": labelled,
            "accuracy": float(np.trace(conf) / labelled) if labelled else float("nan"),
            "miou": mean_iou(conf) if labelled else float("nan"),
            "ece": ece if labelled else None,
        }
    return row


def _least_sure_first(row: dict[str, Any], measure: str) -> tuple[bool, float, str]:
    """The input whose pixels are least sure first (mean of the ranking measure); inputs without pixels last."""
    mean = row[f"{measure}_mean"]
    return (not np.isfinite(mean), -mean if np.isfinite(mean) else 0.0, row["input"])


class GroupPlaces:
    """Where a job's ranked items come from: each item's group, its source and its truth (the plan's, opened once per input)."""

    def __init__(self, plan: JobPlan) -> None:
        self.plan = {g.name: g for g in plan.groups}
        self.opened: dict[str, Place] = {}
        self.problems: list[str] = []

    def __call__(self, item: Item) -> Place:
        assert item.group is not None
        if item.group not in self.opened:
            g = self.plan[item.group]
            reader = InputReader(g.attrs, g.root)
            if reader.problem is not None:
                self.problems.append(f"input {g.name}: {reader.problem}")
            self.opened[item.group] = Place(g.root, reader, g.open_truth())
        return self.opened[item.group]

    def describe(self) -> str:
        """summary.json's input_thumbnails: "ok", or which inputs' sources could not be read back."""
        return "; ".join(self.problems) if self.problems else "ok"


def skipped_line(skipped: Sequence[dict[str, Any]], shown: int = 5) -> str:
    """The skipped inputs in a few words: "b (failed: cannot decode), c (pending)"."""
    words = [f"{s['input']} ({s['status']}{': ' + s['error'] if s.get('error') else ''})" for s in skipped[:shown]]
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return ", ".join(words) + more
