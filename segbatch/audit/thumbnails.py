"""Small pictures of the audit's top items: the input, the labels, the uncertainty, and (with truth) the errors; and of
the items most likely mislabelled: the input, the truth, the prediction and the suspect pixels.

The input comes from the source the store names (a video frame, a raster
window with the run's own band stretch, an image file), as the store's kind
reads it (`Kind.input_reader`, segbatch/kinds/). When the source has moved or
changed, the input picture is left out and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from segbatch import kinds, location
from segbatch.audit.items import Item, item_array
from segbatch.audit.label_errors import LabelErrors, suspect_map
from segbatch.audit.truth import TruthSource, labelled_mask
from segbatch.colour import colourise, heatmap
from segbatch.errors import SegbatchError
from segbatch.kinds.base import ItemPixels
from segbatch.store import NODATA_LABEL

THUMB_SIDE = 256
RIGHT, WRONG, UNLABELLED = (70, 70, 70), (235, 50, 50), (0, 0, 0)
SUSPECT = np.array((255, 0, 255), np.uint8)  # magenta: in no class palette segbatch ships


def shrink(rgb: np.ndarray, nearest: bool) -> np.ndarray:
    """Fit an (H, W, 3) uint8 picture in THUMB_SIDE x THUMB_SIDE, keeping its aspect ratio."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BOX))


def to_display(data: np.ndarray) -> np.ndarray:
    """(C, H, W) floats in [0, 1] -> (H, W, 3) uint8: the first three bands, or the first one in grey."""
    rgb = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    return cast(np.ndarray, (np.clip(np.moveaxis(rgb, 0, -1), 0, 1) * 255).round().astype(np.uint8))


def error_map(labels: np.ndarray, truth: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Grey where the label is right, red where it is wrong, black where there is no truth (or no label)."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[labelled & (labels == truth)] = RIGHT
    out[labelled & (labels != truth)] = WRONG
    return out


class InputReader:
    """Reads the source pixels of audit items; `read` gives None when the source is unavailable."""

    def __init__(self, attrs: dict[str, Any], root: Any, moved: location.Location | None = None) -> None:
        """`moved`: where the source is now (audit --source), in place of where the store says it was read."""
        self.source = attrs["source"]
        self.kind = self.source["kind"]
        self.problem: str | None = None
        self._read: ItemPixels | None = None
        self.path: location.Location | None = None  # where the source is read from, once it can be
        path = location.parse(moved if moved is not None else self.source["path"])
        if not location.exists(path):
            name = location.redact(str(path))
            self.problem = f"the source {name} cannot be read; input thumbnails are left out" + ("" if moved else " (--source: where it is now)")
            return
        opened = kinds.kind(self.kind).input_reader(self.source, root, path)
        if isinstance(opened, str):
            self.problem = opened
        else:
            self._read, self.path = opened, path

    def read(self, item: Item) -> np.ndarray | None:
        if self._read is None:
            return None
        try:
            return self._read(item)
        except (SegbatchError, OSError):
            return None


@dataclass(frozen=True)
class Place:
    """Where an item's pictures come from: its store (a job's group for a job's item), its source and its truth."""

    root: Any
    reader: InputReader
    truth: TruthSource | None


Pictures = dict[str, tuple[np.ndarray, bool]]  # what -> (H, W, 3) uint8, and whether it shrinks by nearest neighbour (labels)


def write_thumbnails(
    items: Sequence[Item],
    folder: Path,
    place: Callable[[Item], Place],
    palette: Sequence[Sequence[int]],
    measure: str,
    vmax: float,
    num_classes: int,
    ignore_index: int | None,
) -> list[dict[str, str]]:
    """Write thumbs/<rank>-<what>.png for each item (in rank order); returns, per item, what -> relative path."""
    folder.mkdir(exist_ok=True)
    out = []
    for rank, item in enumerate(items, start=1):
        where = place(item)
        labels = item_array(where.root, "labels", item)
        values = item_array(where.root, measure, item).astype(np.float32)
        pictures: Pictures = {"labels": (colourise(labels, palette, NODATA_LABEL), True), "uncertainty": (heatmap(values, vmax), False)}
        source = _input_of(where, item, labels.shape)
        if source is not None:
            pictures = {"input": (source, False), **pictures}
        t = _truth_of(where, item)
        if t is not None:
            pictures["errors"] = (error_map(labels, t, labelled_mask(labels, t, num_classes, ignore_index)), True)
        out.append(_save_pictures(folder, rank, pictures))
    return out


def _input_of(where: Place, item: Item, shape: tuple[int, ...]) -> np.ndarray | None:
    """The item's source pixels, when they can be read and match the store's grid."""
    source = where.reader.read(item)
    return source if source is not None and source.shape[:2] == shape else None


def _truth_of(where: Place, item: Item) -> np.ndarray | None:
    """The item's truth, None when it has none or it cannot be read (the scan has said so already)."""
    try:
        return where.truth.read(item) if where.truth is not None else None
    except SegbatchError:
        return None


def _save_pictures(folder: Path, rank: int, pictures: Pictures) -> dict[str, str]:
    """folder/<rank>-<what>.png for each picture, shrunk to a thumbnail; what -> its path relative to the report."""
    from PIL import Image

    names = {}
    for what, (rgb, nearest) in pictures.items():
        name = f"{rank:03d}-{what}.png"
        Image.fromarray(shrink(rgb, nearest)).save(folder / name)
        names[what] = f"{folder.name}/{name}"
    return names


def suspect_overlay(base: np.ndarray, suspects: np.ndarray) -> np.ndarray:
    """`base` (H, W, 3) dimmed, its suspect pixels in magenta."""
    out = (base.astype(np.float32) * 0.45).astype(np.uint8)
    out[suspects] = SUSPECT
    return out


def write_label_error_thumbnails(
    items: Sequence[Item],
    folder: Path,
    place: Callable[[Item], Place],
    palette: Sequence[Sequence[int]],
    errors: LabelErrors,
    measure: str,
    num_classes: int,
    ignore_index: int | None,
) -> list[dict[str, str]]:
    """label-errors/<rank>-<what>.png for the items most likely mislabelled: input, truth, prediction, suspect pixels."""
    folder.mkdir(exist_ok=True)
    out = []
    for rank, item in enumerate(items, start=1):
        where = place(item)
        labels = item_array(where.root, "labels", item)
        t = _truth_of(where, item)
        pictures: Pictures = {}
        source = _input_of(where, item, labels.shape)
        if source is not None:
            pictures["input"] = (source, False)
        if t is not None:
            labelled = labelled_mask(labels, t, num_classes, ignore_index)
            shown = np.where(labelled, t, NODATA_LABEL).astype(np.uint8)
            pictures["truth"] = (colourise(shown, palette, NODATA_LABEL), True)
            pictures["prediction"] = (colourise(labels, palette, NODATA_LABEL), True)
            scores = item_array(where.root, errors.mode, item).astype(np.float64)
            suspects = suspect_map(labels, t, labelled, scores, item_array(where.root, measure, item), errors)
            pictures["suspect"] = (suspect_overlay(source if source is not None else pictures["prediction"][0], suspects), True)
        out.append(_save_pictures(folder, rank, pictures))
    return out


def write_heat_scale(folder: Path, vmax: float) -> str:
    """folder/scale.png: the heat map's colours from 0 (left) to `vmax` (right), as every uncertainty thumbnail uses them."""
    from PIL import Image

    ramp = np.repeat(np.linspace(0.0, vmax, 256, dtype=np.float32)[None, :], 10, axis=0)
    Image.fromarray(heatmap(ramp, vmax)).save(folder / "scale.png")
    return f"{folder.name}/scale.png"
