"""A georeferenced raster (GeoTIFF, ...): its items are tiles (one output chunk each, a tile's core); its store is (y, x) on the raster's grid."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbatch import schema
from segbatch.kinds.base import ItemPixels, Kind, OwnedRegions, Region
from segbatch.location import Location

if TYPE_CHECKING:
    import numpy as np

    from segbatch.audit.items import Block, Item
    from segbatch.audit.ranking import Spacing
    from segbatch.audit.truth import TruthSource
    from segbatch.kinds.base import Exporter


def _raster_rule(source: Mapping[str, Any], path: str) -> str | None:
    if source["tile"] <= 2 * source["overlap"]:
        return f"{path}.tile {source['tile']} is not larger than twice its overlap {source['overlap']}"
    stretch = source.get("stretch")
    if stretch is not None and len(stretch) != len(source["bands"]):
        return f"{path}.stretch has {len(stretch)} entries for {len(source['bands'])} bands"
    return None


def _floats(text: str) -> list[Any]:
    """The words of `text` as floats where they are numbers (else as they are, for the check to name)."""
    out: list[Any] = []
    for word in text.split():
        try:
            out.append(float(word))
        except ValueError:
            out.append(word)
    return out


def _grid(root: Any) -> list[int]:
    """The labels' chunk grid: tiles down, tiles across."""
    labels = root["labels"]
    return [-(-int(n) // int(c)) for n, c in zip(labels.shape, labels.chunks)]


# the store's `source` attribute, and one ledger entry besides schema.ENTRY_COMMON, as this kind writes them
SOURCE = schema.fields(
    {
        "path": schema.string,
        "kind": schema.string,
        "height": schema.integer(1),
        "width": schema.integer(1),
        "bands": schema.list_of(schema.integer(1), least=1, what="a list of band numbers"),
        "dtype": schema.dtype_name,
        "nodata": schema.nullable(schema.number),
        "stretch": schema.nullable(schema.list_of(schema.list_of(schema.number, length=2, what="[low, high]"))),
        "tile": schema.integer(2),
        "overlap": schema.integer(0),
    },
    rule=_raster_rule,
)
ENTRY = schema.fields({}, {**schema.ENTRY_COMMON, "skipped": schema.boolean, "stitched": schema.boolean})


class Raster(Kind):
    name = "raster"
    noun = "tile"
    article = "a raster"
    plural = "rasters"
    options = ("tile", "overlap", "bands", "keep_tiles")
    many = True
    tiled = True
    default_gap = 1.0
    gap_unit = "tiles"

    source_fields = staticmethod(SOURCE)
    entry_fields = staticmethod(ENTRY)

    def source_class(self) -> Any:
        from segbatch.engine.raster import RasterSource

        return RasterSource

    def layout(self, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
        from segbatch.tiling import plan_tiles

        source = attrs["source"]
        return (source["height"], source["width"]), len(plan_tiles(source["height"], source["width"], source["tile"], source["overlap"]))

    def coordinates_problem(self, root: Any, attrs: Mapping[str, Any]) -> str | None:
        transform = root["spatial_ref"].attrs.get("GeoTransform") if "spatial_ref" in root else None
        if not isinstance(transform, str) or len(transform.split()) != 6 or schema.list_of(schema.number)(_floats(transform), "") is not None:
            return "spatial_ref has no GeoTransform of six numbers"
        return None

    def owned_regions(self, root: Any, source: Mapping[str, Any]) -> OwnedRegions:
        """A tile's core once stitched (its tiles/ are scratch)."""
        from segbatch.tiling import plan_tiles

        tiles = plan_tiles(source["height"], source["width"], source["tile"], source["overlap"])

        def regions(unit: int, entry: Mapping[str, Any]) -> list[Region]:
            return [tiles[unit].core.slices] if entry.get("stitched") else []

        return regions

    def item_count(self, root: Any) -> int:
        """One item per output chunk."""
        return math.prod(_grid(root))

    def audit_blocks(self, root: Any, attrs: Mapping[str, Any], group: str | None) -> Iterator[Block]:
        """One block per output chunk, which is one item: a tile named by its number and its rows and columns."""
        import numpy as np

        from segbatch.audit.items import Block, Item

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

    def spacing(self, root: Any, min_gap: float | None, top: int) -> Spacing:
        """No two picks within `--min-gap` tiles (Chebyshev distance on the tile grid; its neighbourhood clipped to the grid).
        The default (1) is filled up with the best other tiles when a small grid leaves fewer than `top` spaced picks."""
        from segbatch.audit.ranking import Spacing

        gap = self.default_gap if min_gap is None else float(min_gap)
        if gap == 0:
            return Spacing(self.name, 0.0, 0.0, 1)
        chunks = tuple(int(c) for c in root["labels"].chunks)
        reach = int(math.floor(gap))  # tiles at Chebyshev distance <= gap are excluded
        side = [min(2 * reach + 1, g) for g in _grid(root)]
        return Spacing(self.name, gap, reach + 1.0, side[0] * side[1], (chunks[0], chunks[1]), fill=min_gap is None)

    def position(self, spacing: Spacing, item: Item) -> tuple[float, ...]:
        return (float(item.meta["row"] // spacing.tile[0]), float(item.meta["col"] // spacing.tile[1]))

    def describe_gap(self, gap: float) -> str:
        return f"no two within {gap:g} tile{'s' if gap != 1 else ''}"

    def input_reader(self, source: Mapping[str, Any], root: Any, path: Location) -> ItemPixels | str:
        """A window of the raster, with the run's bands and stretch; the raster must still have its size and bands."""
        from segbatch.audit.thumbnails import to_display
        from segbatch.errors import SegbatchError
        from segbatch.sources.raster import fits_source, plan_from_store, read_window
        from segbatch.tiling import Window

        plan = plan_from_store(dict(source), root["spatial_ref"].attrs)
        try:
            fits = fits_source(plan)
        except (SegbatchError, OSError):
            fits = False
        if not fits:
            return f"the source {path} changed since the run (its size or bands); input thumbnails are left out"

        def read(item: Item) -> np.ndarray:
            meta = item.meta
            data, valid = read_window(plan, Window(meta["row"], meta["col"], meta["height"], meta["width"]))
            rgb = to_display(data)
            rgb[~valid] = 0
            return rgb

        return read

    def open_truth(self, path: Path, root: Any, attrs: Mapping[str, Any]) -> TruthSource:
        """A single-band label raster on the store's grid, or an array of the store's shape."""
        from segbatch.audit.truth import ArrayTruth, RasterTruth, is_array_truth

        shape = tuple(root["labels"].shape)
        if is_array_truth(path):
            return ArrayTruth(path, shape)
        return RasterTruth(path, shape, root)

    def exporter(self) -> Exporter:
        """A Cloud-Optimised GeoTIFF."""
        from segbatch.export import export_raster

        return export_raster

    def info_rows(self, source: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The raster's size, dtype and bands, and the tile plan."""
        s = source
        return [("raster", f"{s['width']}x{s['height']} {s['dtype']}, bands {s['bands']}, tile {s['tile']} overlap {s['overlap']}")]
