"""The relabelling queue (`segbatch audit --queue DIR`): the items a person should look at first, as labelling tools import them.

The folder holds, for each item, its pixels cut out of the source, the model's
prediction as the head start, and its uncertainty heat map:

    data/NAME.png                   the item (a video frame, a raster tile in the run's display bands, an image)
    labels/NAME.png                 class-index mask of the prediction (uint8; 255 where the store has no label)
    mask_targets.json               class index -> name
        (data/ + labels/ + mask_targets: FiftyOne's ImageSegmentationDirectory)
    labelmap.txt                    CVAT's "Segmentation mask" label map (name:r,g,b::), "background" for no label
    ImageSets/Segmentation/default.txt   the names, without extension
    SegmentationClass/NAME.png      the prediction in the label map's colours
        (with a task made from data/, CVAT imports these as "Segmentation mask 1.1")
    uncertainty/NAME.png            the heat map (the report's colours and scale)
    geotiff/NAME.tif, NAME.labels.tif    a raster tile with its georeferencing: the source's bands, the prediction
    manifest.csv                    rank, name, input, item, source, frame or tile, score, why

NAME is the rank and the item (`0001-frame-000120`), so the folder sorts in
the order to work through. The folder is built aside and renamed into place.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import __version__, location
from segbatch.atomic import replace_folder
from segbatch.audit.items import Item, item_array
from segbatch.audit.thumbnails import Place
from segbatch.colour import colourise, heatmap
from segbatch.errors import InputError
from segbatch.store import NODATA_LABEL

QUEUE_BY = ("uncertainty", "label-errors")
QUEUE_MARK = "segbatch_queue"  # queue.json's key: this folder is a relabelling queue (what --overwrite may replace)


@dataclass(frozen=True)
class Entry:
    """An item of the queue, in the order to work through: its score under the queue's ranking and why it is there."""

    item: Item
    score: float
    why: str


def is_queue(folder: Path) -> bool:
    """Whether `folder` is a relabelling queue segbatch wrote (what --overwrite may replace)."""
    try:
        return QUEUE_MARK in json.loads((folder / "queue.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "item"


def entry_name(rank: int, item: Item) -> str:
    """`0001-frame-000120`, `0002-drive-07-tile-12`, `0003-street-0004-png`: unique by rank, sortable, safe in any tool."""
    meta = item.meta
    if "frame" in meta:
        what = f"frame-{int(meta['frame']):06d}"
    elif "path" in meta:
        what = _slug(str(Path(item.name).with_suffix("")))  # the image's path in its folder, without its suffix
    else:
        what = f"tile-{item.index:05d}"
    group = f"{_slug(item.group)}-" if item.group is not None else ""
    return f"{rank:04d}-{group}{what}"


def labelmap(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> tuple[str, tuple[int, int, int]]:
    """CVAT's labelmap.txt, and the colour of "background" (no label): black unless a class has it."""
    colours = [tuple(int(v) for v in c) for c in palette]
    if len(set(colours)) != len(colours):
        raise InputError("the model's palette gives two classes one colour; CVAT tells classes by colour (set distinct colours with --classes-file)")
    background: tuple[int, int, int] = next(c for c in [(v, v, v) for v in range(256)] if c not in colours)
    lines = ["# label:color_rgb:parts:actions", f"background:{','.join(map(str, background))}::"]
    lines += [f"{name}:{','.join(map(str, c))}::" for name, c in zip(classes, colours, strict=True)]
    return "\n".join(lines) + "\n", background


def write_queue(
    folder: Path,
    entries: Sequence[Entry],
    place: Callable[[Item], Place],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    measure: str,
    vmax: float,
    ranked_by: str,
) -> int:
    """Write the queue folder (built aside, then renamed into place); returns how many items it holds."""
    from PIL import Image

    text, background = labelmap(classes, palette)
    building = folder.parent / f".{folder.name}.building-{uuid.uuid4().hex[:8]}"
    for sub in ("data", "labels", "uncertainty", "SegmentationClass", "ImageSets/Segmentation"):
        (building / sub).mkdir(parents=True)
    try:
        rows, names = [], []
        for rank, entry in enumerate(entries, start=1):
            item, where = entry.item, place(entry.item)
            name = entry_name(rank, item)
            pixels = where.reader.read(item)
            if pixels is None:
                why = where.reader.problem or "its source cannot be read"
                raise InputError(f"the queue needs each item's pixels: {why} (--source: where it is now)")
            labels = item_array(where.root, "labels", item)
            Image.fromarray(pixels).save(building / "data" / f"{name}.png")
            Image.fromarray(labels.astype(np.uint8), "L").save(building / "labels" / f"{name}.png")
            Image.fromarray(heatmap(item_array(where.root, measure, item).astype(np.float32), vmax)).save(building / "uncertainty" / f"{name}.png")
            coloured = colourise(labels, palette, NODATA_LABEL)
            coloured[labels == NODATA_LABEL] = background
            Image.fromarray(coloured).save(building / "SegmentationClass" / f"{name}.png")
            if "row" in item.meta and where.reader.path is not None:
                _geotiffs(building / "geotiff", name, where.reader.path, item, labels)
            names.append(name)
            source = where.reader.source.get("path")
            at = item.meta.get("frame", item.meta.get("path", item.index))
            rows.append(
                {"rank": rank, "name": name, "input": item.group or "", "item": item.name, "source": source, "at": at, "score": entry.score, "why": entry.why}
            )
        (building / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{n}\n" for n in names))
        (building / "labelmap.txt").write_text(text)
        (building / "mask_targets.json").write_text(json.dumps({str(i): n for i, n in enumerate(classes)}, indent=2))
        with (building / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["rank", "name", "input", "item", "source", "at", "score", "why"])
            writer.writeheader()
            writer.writerows(rows)
        (building / "queue.json").write_text(
            json.dumps({QUEUE_MARK: __version__, "ranked_by": ranked_by, "items": len(rows), "classes": list(classes)}, indent=2)
        )
        replace_folder(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return len(entries)


def _geotiffs(folder: Path, name: str, source: location.Location, item: Item, labels: np.ndarray) -> None:
    """A raster tile as GeoTIFFs with the source's georeferencing: its bands as they are, and the prediction."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(exist_ok=True)
    meta = item.meta
    window = Window(int(meta["col"]), int(meta["row"]), int(meta["width"]), int(meta["height"]))
    with rasterio.open(location.gdal_path(source)) as ds:
        data = ds.read(window=window)
        profile = {"driver": "GTiff", "crs": ds.crs, "transform": ds.window_transform(window), "width": window.width, "height": window.height}
        with rasterio.open(folder / f"{name}.tif", "w", **profile, count=ds.count, dtype=data.dtype, nodata=ds.nodata) as out:
            out.write(data)
    with rasterio.open(folder / f"{name}.labels.tif", "w", **profile, count=1, dtype="uint8", nodata=NODATA_LABEL) as out:
        out.write(labels.astype(np.uint8)[None])


def uncertainty_why(measure: str, row: dict[str, Any]) -> str:
    return f"most uncertain: mean {measure} {row[f'{measure}_mean']:.4g}, {row['above_threshold'] * 100:.1f}% of pixels above the threshold"


def label_error_why(score: float) -> str:
    return f"likely mislabelled: label-issue score {score:.3g} (calm, confident disagreement with the truth)"
