"""The audit's top-K with diversity: the best items, no two of them close together.

Consecutive frames of a video look alike, and so do neighbouring tiles of a
raster: a plain top-K of a video is a run of near-duplicate frames (16, 17,
15, 12, ...). Picks are therefore spaced: in score order, an item is skipped
when it is close to one already picked (greedy non-maximum suppression).

- video: picks are at least `--min-gap` seconds apart (the store's `time`
  coordinate; default 1 s);
- raster: no two picks within `--min-gap` tiles of each other (Chebyshev
  distance in the tile grid, so 1 leaves out the 8 neighbours; default 1);
- images: no spacing (the images of a folder are not a sequence).

Each kind says how (`Kind.spacing`, `position`, `describe_gap`, segbatch/kinds/).

In a job of many inputs, each input has its own time axis or tile grid: picks
are spaced within an input, and two items of different inputs never exclude
each other (`DiverseTop.enter` switches to the next input's spacing).

Memory stays bounded: the scan keeps a heap of the best `top * neighbourhood`
items only, where the neighbourhood is the most items one pick can exclude
(itself included; 49 frames at 25 fps and 1 s, 9 tiles at 1 tile). Each pick
removes at most a neighbourhood from that pool, so greedy selection over it
finds at least `top` picks, and they are exactly those of greedy selection
over the whole store (the pool holds the first items of the same score
order). The pool is capped at MAX_CANDIDATES items; when the cap binds and
fewer than `top` picks are found in it, the ranking may miss picks that a
pass over the whole store would add, and `summary.json` says so
(`ranking.exact` false).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbatch import kinds
from segbatch.audit.items import Item
from segbatch.errors import InputError

MAX_CANDIDATES = 10_000  # a candidate holds its Item and its items.csv row packed (CompactRows): ~1 kB + 8 bytes a column


@dataclass(frozen=True)
class Spacing:
    """Where an item is (a point) and how far apart two picks must be: close means Chebyshev distance < radius."""

    kind: str
    gap: float  # as given: seconds (video), tiles (raster), 0 (images)
    radius: float  # picks closer than this exclude each other (0: none do)
    neighbourhood: int  # the most items one pick can exclude, itself included
    tile: tuple[int, int] = (1, 1)  # a raster's chunk shape: pixel offsets to tile-grid positions
    fill: bool = False  # the kind's default spacing: when it leaves fewer than `top` picks, the best other items fill up

    @property
    def unit(self) -> str:
        return kinds.kind(self.kind).gap_unit

    def position(self, item: Item) -> tuple[float, ...]:
        return kinds.kind(self.kind).position(self, item)

    def describe(self) -> str:
        """How the picks are spaced, for the report: "at least 1 s apart", "no two within 1 tile", or ""."""
        if self.radius <= 0:
            return ""
        return kinds.kind(self.kind).describe_gap(self.gap)


def spacing_for(root: Any, kind: str, min_gap: float | None, top: int) -> Spacing:
    """The spacing `--min-gap` asks for on this store for `top` picks (None: the kind's default)."""
    if min_gap is not None and (not math.isfinite(min_gap) or min_gap < 0):
        raise InputError(f"--min-gap must be a number >= 0, got {min_gap}")
    return kinds.kind(kind).spacing(root, min_gap, top)


class DiverseTop:
    """The scan's ranking state: a bounded heap of candidates, then greedy spaced selection.

    `spacing` is the one items are offered under; for a job of many inputs, its
    neighbourhood is the largest of the inputs' (it sizes the pool), and
    `enter` gives each input's own before its items are offered.
    """

    def __init__(self, top: int, spacing: Spacing) -> None:
        self.top = top
        self.spacing = spacing
        self.capacity = min(top * spacing.neighbourhood, max(top, MAX_CANDIDATES))
        self.heap: list[tuple[float, int, Any]] = []
        self.dropped = False  # an item fell out of the pool: the pool is not the whole store
        self.offered = 0  # items offered so far: ties go to the earlier one, across the inputs of a job too
        self.filled = 0  # picks that are not spaced: the best of the rest under a default spacing (picks())

    def enter(self, spacing: Spacing) -> None:
        """The items offered from now on are those of another input of a job, placed on its own axis or grid."""
        self.spacing = spacing

    def offer(self, score: float, item: Item, payload: Any) -> None:
        """An item with its ranking score (higher first; ties: the earlier item) and what the report keeps of it."""
        if self.top <= 0:
            return
        self.offered += 1
        place = (item.group, self.spacing.position(item) if self.spacing.radius > 0 else ())
        entry = (score, -self.offered, (item, payload, place))
        if len(self.heap) < self.capacity:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)
            self.dropped = True
        else:
            self.dropped = True

    def picks(self) -> list[tuple[float, Item, Any]]:
        """The best items in score order, each far enough from every earlier pick; at most `top`. Under a default spacing
        (`fill`) that leaves fewer, the best of the other candidates follow, so a short input still shows `top` items."""
        ordered = sorted(self.heap, key=lambda e: e[:2], reverse=True)
        out: list[tuple[float, Item, Any]] = []
        skipped: list[tuple[float, Item, Any]] = []
        taken: dict[str | None, list[tuple[float, ...]]] = {}  # picks' positions, per input of a job
        for score, _, (item, payload, (group, p)) in ordered:
            if len(out) == self.top:
                break
            if self.spacing.radius > 0:
                near = taken.setdefault(group, [])
                if near and bool((np.abs(np.asarray(near) - p).max(axis=1) < self.spacing.radius).any()):
                    skipped.append((score, item, payload))
                    continue
                near.append(p)
            out.append((score, item, payload))
        self.filled = max(0, min(self.top - len(out), len(skipped))) if self.spacing.fill else 0
        return sorted(out + skipped[: self.filled], key=lambda pick: pick[0], reverse=True)  # stable: ties keep their order

    def exact(self, picked: int) -> bool:
        """Whether the picks are those of greedy selection over the whole store (see the module's note)."""
        return picked >= self.top or not self.dropped

    def summary(self, picked: int) -> dict[str, Any]:
        return {
            "min_gap": self.spacing.gap,
            "unit": self.spacing.unit or None,
            "spacing": self.spacing.describe() or "none",
            "picked": picked,
            "filled": self.filled,
            "candidates": len(self.heap),
            "exact": self.exact(picked),
        }


class CompactRows:
    """items.csv rows held by the candidate pool: numbers in one float64 array a row (8 bytes a column, ints flagged),
    the few other values (names, truth status) aside, column names and int flags shared between rows. A dict of
    Python floats costs ~80 bytes a column: 10,000 candidates of a 150-class model would hold ~250 MB."""

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()
        self._ints: frozenset[int] = frozenset()

    def pack(self, row: dict[str, Any]) -> tuple[tuple[str, ...], frozenset[int], np.ndarray, dict[int, Any]]:
        keys = tuple(row)
        if keys != self._keys:
            self._keys = keys
        numbers = np.full(len(keys), np.nan)
        ints, others = [], {}
        for i, v in enumerate(row.values()):
            if isinstance(v, int | np.integer) and not isinstance(v, bool) and abs(int(v)) <= 2**53:  # exact as a float64
                numbers[i] = v
                ints.append(i)
            elif isinstance(v, float | np.floating):
                numbers[i] = v
            else:
                others[i] = v
        flags = frozenset(ints)
        if flags != self._ints:
            self._ints = flags
        return self._keys, self._ints, numbers, others

    @staticmethod
    def unpack(packed: tuple[tuple[str, ...], frozenset[int], np.ndarray, dict[int, Any]]) -> dict[str, Any]:
        keys, ints, numbers, others = packed
        return {k: others[i] if i in others else int(numbers[i]) if i in ints else float(numbers[i]) for i, k in enumerate(keys)}
