"""What an audit item is, and the statistics of one item.

An item is what a person would look at: a frame of a video, a tile of a
raster (one output chunk, i.e. one tile's core), an image of a folder; each
kind of store says what its items are (`Kind.audit_blocks`, segbatch/kinds/).
Items are read in blocks of whole chunks (a video chunk holds several frames),
one block at a time, so an audit's memory is bounded by a chunk, not the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbatch import kinds
from segbatch.kinds.base import Region
from segbatch.store import NODATA_LABEL


@dataclass(frozen=True)
class Item:
    """One row of items.csv: its position in the store's order, where its pixels are, and kind-specific columns."""

    index: int
    region: Region  # in the output arrays (labels and friends)
    name: str  # what a person calls it: "frame 120", "tile 7 (rows 0:448, cols 448:896)", "street/0003.png"
    meta: dict[str, Any]
    group: str | None = None  # the input it belongs to in a job store of many inputs (None: a store of one input)


@dataclass(frozen=True)
class Block:
    """A region read at once (whole chunks) and the items in it, each with its place inside the block."""

    region: Region
    items: tuple[tuple[Item, Region], ...]


def item_count(root: Any, kind: str) -> int:
    """The items of a store of `kind`."""
    return kinds.kind(kind).item_count(root)


def iter_blocks(root: Any, attrs: dict[str, Any], group: str | None = None) -> Iterator[Block]:
    """The store's items in order, grouped into blocks of whole chunks; `group` names the input of a job's group."""
    return kinds.kind(attrs["source"]["kind"]).audit_blocks(root, attrs, group)


def squeeze_item(values: np.ndarray, local: Region, name: str = "") -> np.ndarray:
    """An item's (H, W) pixels out of a block array of the array `name` ((H, W, K) for probs, which has a class axis last):
    frames and images come with a leading axis of 1."""
    out = values[local]
    return out[0] if out.ndim == (4 if name == "probs" else 3) else out


def item_array(root: Any, name: str, item: Item) -> np.ndarray:
    """One item's pixels of the store's array `name`, read on their own (thumbnails, the queue)."""
    return squeeze_item(np.asarray(root[name][item.region]), (slice(None),), name)


@dataclass(frozen=True)
class PixelStats:
    """Per-item figures over its valid pixels (label != 255)."""

    valid_pixels: int
    values: dict[str, np.ndarray]  # name -> the finite values of its valid pixels (what store-wide histograms add up)
    measures: dict[str, tuple[float, float]]  # name -> (mean, 95th percentile)
    above: int  # valid pixels whose ranking measure is above the threshold
    class_pixels: np.ndarray  # (K,)
    class_measure_mean: np.ndarray  # (K,), NaN for classes absent from the item

    @property
    def above_threshold(self) -> float:
        return self.above / self.valid_pixels if self.valid_pixels else float("nan")


def item_stats(labels: np.ndarray, measures: dict[str, np.ndarray], measure: str, threshold: float, num_classes: int) -> PixelStats:
    """Mean and 95th percentile of each measure, the fraction above `threshold` of `measure`, and per-class figures."""
    valid = labels != NODATA_LABEL
    n = int(valid.sum())
    empty = np.full(num_classes, np.nan)
    if n == 0:
        none = {k: np.zeros(0) for k in measures}
        return PixelStats(0, none, {k: (float("nan"), float("nan")) for k in measures}, 0, np.zeros(num_classes, np.int64), empty)
    finite, summary = {}, {}
    for name, values in measures.items():
        v = values[valid].astype(np.float64)
        finite[name] = v = v[np.isfinite(v)]
        summary[name] = (float(v.mean()), float(np.percentile(v, 95))) if v.size else (float("nan"), float("nan"))
    lab = labels[valid].astype(np.int64)
    lab = np.where(lab < num_classes, lab, num_classes)  # an id the model cannot produce would be a bug; keep it out of the classes
    m = np.nan_to_num(measures[measure][valid].astype(np.float64))
    counts = np.bincount(lab, minlength=num_classes + 1)[:num_classes]
    sums = np.bincount(lab, weights=m, minlength=num_classes + 1)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, sums / counts, np.nan)
    return PixelStats(n, finite, summary, int((m > threshold).sum()), counts, per_class)
