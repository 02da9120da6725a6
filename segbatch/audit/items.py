"""What an audit item is for each kind of store, and the statistics of one item.

An item is what a person would look at: a frame of a video, a tile of a
raster (one output chunk, i.e. one tile's core), an image of a folder. Items
are read in blocks of whole chunks (a video chunk holds several frames), one
block at a time, so an audit's memory is bounded by a chunk, not the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbatch.errors import InputError
from segbatch.store import NODATA_LABEL

Region = tuple[slice, ...]


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


def item_noun(kind: str) -> str:
    return {"video": "frame", "raster": "tile", "images": "image"}[kind]


def item_count(root: Any, kind: str) -> int:
    labels = root["labels"]
    if kind == "raster":
        return int(np.prod([-(-n // c) for n, c in zip(labels.shape, labels.chunks)]))
    return int(labels.shape[0])


def iter_blocks(root: Any, attrs: dict[str, Any], group: str | None = None) -> Iterator[Block]:
    """The store's items in order, grouped into blocks of whole chunks; `group` names the input of a job's group."""
    kind = attrs["source"]["kind"]
    if kind == "video":
        yield from _video_blocks(root, attrs, group)
    elif kind == "raster":
        yield from _raster_blocks(root, group)
    elif kind == "images":
        yield from _image_blocks(root, group)
    else:
        raise InputError(f"cannot audit a store of kind {kind!r}")


def _video_blocks(root: Any, attrs: dict[str, Any], group: str | None) -> Iterator[Block]:
    labels = root["labels"]
    frames, step = labels.shape[0], labels.chunks[0]
    first = int(attrs["source"]["frame_range"][0])
    times = np.asarray(root["time"][...], np.float64)
    for lo in range(0, frames, step):
        hi = min(lo + step, frames)
        items = tuple(
            (Item(i, (slice(i, i + 1),), f"frame {first + i}", {"frame": first + i, "time": float(times[i])}, group), (slice(i - lo, i - lo + 1),))
            for i in range(lo, hi)
        )
        yield Block((slice(lo, hi),), items)


def _raster_blocks(root: Any, group: str | None) -> Iterator[Block]:
    labels = root["labels"]
    (h, w), (ch, cw) = labels.shape, labels.chunks
    xs, ys = np.asarray(root["x"][...]), np.asarray(root["y"][...])
    index = 0
    for r in range(0, h, ch):
        for c in range(0, w, cw):
            rows, cols = slice(r, min(r + ch, h)), slice(c, min(c + cw, w))
            meta = {
                "row": r,
                "col": c,
                "height": rows.stop - r,
                "width": cols.stop - c,
                "x": float(xs[(c + cols.stop - 1) // 2]),
                "y": float(ys[(r + rows.stop - 1) // 2]),
            }
            name = f"tile {index} (rows {r}:{rows.stop}, cols {c}:{cols.stop})"
            yield Block((rows, cols), ((Item(index, (rows, cols), name, meta, group), (slice(None), slice(None))),))
            index += 1


def _image_blocks(root: Any, group: str | None) -> Iterator[Block]:
    paths = root["path"][...]
    heights, widths = root["height"][...], root["width"][...]
    for i, (path, h, w) in enumerate(zip(paths, heights, widths)):
        region = (slice(i, i + 1), slice(0, int(h)), slice(0, int(w)))
        yield Block(region, ((Item(i, region, str(path), {"path": str(path), "height": int(h), "width": int(w)}, group), (slice(None),) * 3),))


def squeeze_item(values: np.ndarray, local: Region) -> np.ndarray:
    """An item's (H, W) pixels out of a block array (frames and images come with a leading axis of 1)."""
    out = values[local]
    return out[0] if out.ndim == 3 else out


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
