"""Rasters as a source: one unit per tile (core + overlap), tiles/ written by the workers, then a blended stitch.

Same engine, ledger and resume as every source: a tile's worker writes its
own chunk of each tiles/ array (mean class probabilities as uint8, and the
uncertainty), the stitcher writes each output chunk once. The store is
marked complete, then tiles/ is removed unless --keep-tiles; `segbatch
stitch` re-runs the stitch alone from a kept tiles/.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segbatch import location
from segbatch.engine.job import RunConfig, source_identity
from segbatch.engine.outcome import RunSummary, finished_or_fail, stage_totals
from segbatch.engine.pipeline import require_readable
from segbatch.engine.source import Item, UnitReport, Write
from segbatch.engine.step import ModelStep
from segbatch.engine.stitcher import Stitcher
from segbatch.errors import InputError
from segbatch.owner import Owner
from segbatch.problems import index_ranges
from segbatch.progress import note
from segbatch.sources.raster import RasterPlan, georeference, geozarr_attrs, prepare_reads, probe_raster, read_bands, scale_to_unit
from segbatch.stitch import StitchJob
from segbatch.store import ArraySpec, StoreLayout, consolidate, update_attrs
from segbatch.tilestore import PROB_NODATA, PROB_SCALE, tile_side
from segbatch.tiling import TilePlan, padded_side, plan_tiles

if TYPE_CHECKING:
    from zarr import Group


@dataclass(frozen=True)
class TileUnit:
    """A unit of a raster: one tile (core + overlap) of the tile plan, its id the tile number."""

    id: int


@dataclass(frozen=True)
class RasterJob:
    """The worker half: everything an actor needs about the raster besides the tile (sent once to each)."""

    store: str
    store_dtype: str  # tiles/uncertainty's dtype (the model step computes in float32; probs are quantised to uint8)
    plan: RasterPlan
    tiles: TilePlan
    tile_side: tuple[int, int]  # (height, width) of the tiles/ arrays: segbatch.tilestore.tile_side
    pool: int  # the model's input sides must be multiples of this (each pooling level halves them)

    def check_node(self) -> None:
        require_readable(self.plan.path)
        prepare_reads(self.plan, self.tiles.tile)  # GDAL (imported, 0.25 s) as the actor starts, not in its first unit's way

    def read(self, tile: TileUnit, report: UnitReport) -> Generator[Item, None, None]:
        """The tile's window, reflect-padded to sides the pooling halves exactly; nothing when it is all nodata (skipped)."""
        data, valid = read_bands(self.plan, self.tiles[tile.id].window)
        data = data if self.plan.stretch is None else scale_to_unit(data, self.plan)  # uint8 crosses to the device as it is
        if not valid.any():
            report.skipped = True
            return
        h, w = valid.shape
        ph, pw = padded_side(h, self.pool) - h, padded_side(w, self.pool) - w
        if ph or pw:  # a raster smaller than a tile, say
            data = np.pad(data, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        yield Item(tile.id, data, info=valid)

    def to_model(self, x: Any) -> Any:
        """uint8 bands / 255 on the device (a quarter of the bytes cross to it); stretched bands come scaled."""
        return x.float().div_(255) if not x.is_floating_point() else x

    def from_model(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """On the device: probabilities quantised to the tile store's uint8 and laid out class-first as tiles/probs is (a
        quarter of float32's bytes come back, and the host neither computes on them nor transposes them), the uncertainty
        cast to the store's dtype."""
        import torch

        probs = torch.round(outputs["probs"] * PROB_SCALE).to(torch.uint8).permute(0, 3, 1, 2).contiguous()  # tiles/' class-first
        out = {**outputs, "probs": probs}
        if "uncertainty" in outputs:
            out["uncertainty"] = outputs["uncertainty"].to(getattr(torch, self.store_dtype))
        return out

    def placer(self, tile: TileUnit, num_classes: int) -> TilePlacer:
        return TilePlacer(self)

    def unit_stats(self, tile: TileUnit, report: UnitReport) -> dict[str, Any]:
        return {"unit": tile.id, "skipped": report.skipped}


class TilePlacer:
    """A tile's outputs into its own chunk of tiles/: probabilities as uint8 (nodata 255), uncertainty NaN outside the data."""

    def __init__(self, job: RasterJob) -> None:
        self.job = job

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        (item,) = items
        valid = item.info
        side = self.job.tile_side
        probs = outputs["probs"][:1]  # quantised and class-first on the device (`from_model`)
        arrays = {"tiles/probs": _masked(probs, valid, side, PROB_NODATA, np.uint8)}
        if "uncertainty" in outputs:
            arrays["tiles/uncertainty"] = _masked(outputs["uncertainty"][:1], valid, side, np.nan, self.job.store_dtype)
        # tiles/ is removed after the stitch: the digests `verify` checks are those of the stitched chunks
        return [Write((slice(item.index, item.index + 1),), arrays, digests=False)]

    def close(self) -> list[Write]:
        return []


def _masked(values: np.ndarray, valid: np.ndarray, side: tuple[int, int], fill: Any, dtype: Any) -> np.ndarray:
    """(1, ..., H, W) model outputs as a tile of tiles/: `fill` outside the data and past its (h, w) up to `side`.

    Most tiles are whole and all data: they go as they came, no copy.
    """
    h, w = valid.shape
    if values.shape[-2:] == side and values.dtype == dtype and (h, w) == side and valid.all():
        return values
    out = np.full((*values.shape[:-2], *side), fill, dtype)
    out[..., :h, :w] = np.where(valid, values[..., :h, :w], fill)
    return out


class RasterSource:
    """The driver half: plan the raster and its tiles, lay out the store (tiles/ included), stitch at the end."""

    kind = "raster"
    noun = "tile"

    def __init__(self, cfg: RunConfig, ckpt: Any) -> None:
        self.cfg, self.ckpt = cfg, ckpt
        self.plan = probe_raster(cfg.input, cfg.bands, ckpt.spec.in_channels)
        if self.plan.crs_wkt is None:
            note(f"warning: {cfg.input} has no CRS; the store will have pixel coordinates only", cfg.quiet)
        self.tiles = plan_tiles(self.plan.height, self.plan.width, cfg.tile, cfg.overlap)
        self.max_units = len(self.tiles)

    def fingerprint(self) -> dict[str, Any]:
        return {"source": source_identity(self.cfg.input), "bands": list(self.plan.bands), "tile": self.cfg.tile, "overlap": self.cfg.overlap}

    def new_store(self, actors: int) -> tuple[StoreLayout, dict[str, Any]]:
        plan, tiles, cfg = self.plan, self.tiles, self.cfg
        geo, geozarr = georeference(plan), geozarr_attrs(plan)
        k = self.ckpt.spec.num_classes
        side_h, side_w = tile_side(tiles)
        n = len(tiles)
        extra = [ArraySpec("tiles/probs", (n, k, side_h, side_w), (1, k, side_h, side_w), "uint8", PROB_NODATA, ("tile", "class", "ty", "tx"), scratch=True)]
        if cfg.samples > 0:
            extra.append(ArraySpec("tiles/uncertainty", (n, side_h, side_w), (1, side_h, side_w), cfg.float_dtype, np.nan, ("tile", "ty", "tx"), scratch=True))
        layout = StoreLayout(
            dims=("y", "x"),
            shape=(plan.height, plan.width),
            chunks=(tiles.core, tiles.core),
            num_classes=k,
            units=n,
            outputs=("labels", "entropy", "confidence", *(("uncertainty",) if cfg.samples > 0 else ())),
            float_dtype=cfg.float_dtype,
            coords={
                "x": (("x",), geo["x"], {"standard_name": "projection_x_coordinate", "long_name": "x at pixel centres"}),
                "y": (("y",), geo["y"], {"standard_name": "projection_y_coordinate", "long_name": "y at pixel centres"}),
                "spatial_ref": ((), np.array(0, np.int64), geo["spatial_ref"]),
            },
            array_attrs={"grid_mapping": "spatial_ref", **geozarr},
            root_attrs=geozarr,
            extra=tuple(extra),
        )
        source = {
            "path": location.absolute(cfg.input),
            "kind": "raster",
            "height": plan.height,
            "width": plan.width,
            "bands": list(plan.bands),
            "dtype": plan.dtype,
            "nodata": plan.nodata,
            "stretch": [list(s) for s in plan.stretch] if plan.stretch else None,
            "tile": tiles.tile,
            "overlap": tiles.overlap,
        }
        # segbatch.geozarr: the same keys again where earlier stores kept them, so readers of that place keep working
        return layout, {"source": source, "geozarr": geozarr}

    def units(self, attrs: Mapping[str, Any]) -> list[TileUnit]:
        return [TileUnit(i) for i in range(len(self.tiles))]

    @staticmethod
    def job_options(cfg: RunConfig) -> dict[str, Any]:
        """What every raster of a job shares in its fingerprint (each group's own adds its raster's identity)."""
        options = {"bands": list(cfg.bands) if cfg.bands else None, "tile": cfg.tile, "overlap": cfg.overlap}
        return options | {"outputs": list(cfg.extra_outputs), "hwaccel": cfg.hwaccel}

    def step(self, checkpoint: str) -> ModelStep:
        """Class probabilities (and the uncertainty) in float32 for the blend, a tile at a time (edge tiles are smaller)."""
        outputs = ("probs", "uncertainty") if self.cfg.samples > 0 else ("probs",)
        return ModelStep.of(self.cfg, checkpoint, outputs, "float32", 1)

    def job(self, store: str) -> RasterJob:
        cfg = self.cfg
        return RasterJob(
            store=store,
            store_dtype=cfg.float_dtype,
            plan=self.plan,
            tiles=self.tiles,
            tile_side=tile_side(self.tiles),
            pool=2 ** len(self.ckpt.model.encoders),
        )

    def size(self, tile: TileUnit) -> int:
        return 1

    def describe(self, tile: TileUnit) -> str:
        return f"tile {tile.id} (window {self.tiles[tile.id].window})"

    def check_resume(self, root: Group, attrs: Mapping[str, Any]) -> None:
        if "tiles" not in root and attrs["status"] == "complete":
            raise InputError(f"{self.cfg.out} is complete and its tiles/ were removed after stitching: nothing to resume; use --overwrite to run again")
        if "tiles" not in root:
            raise InputError(f"{self.cfg.out} has no tiles/ left to resume from (status {attrs['status']}); use --overwrite to run again")

    def begin(self, root: Group, done: Mapping[int, Mapping[str, Any]], owner: Owner) -> None:
        """Start the stitcher: chunks are blended as their tiles finish (a job's groups are fenced by the lease at its root)."""
        job = StitchJob(
            store=location.absolute(self.cfg.out),
            tiles=self.tiles,
            run=owner.run,
            lease=location.absolute(owner.store),
            environment=location.storage_variables(),
        )
        self.stitcher = new_stitcher(job, root, done, self.cfg.keep_tiles, owner)

    def unit_done(self, unit: TileUnit, entry: Mapping[str, Any]) -> None:
        self.stitcher.tile_done(unit.id, entry)

    def finish(self, root: Group, units: Sequence[TileUnit], ran: Sequence[TileUnit], summary: RunSummary, owner: Owner) -> None:
        stitch_store(root, self.stitcher, self.cfg.keep_tiles, self.cfg.quiet, summary, owner)


def new_stitcher(job: StitchJob, root: Group, done: Mapping[int, Mapping[str, Any]], keep_tiles: bool, owner: Owner, again: bool = False) -> Stitcher:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    return Stitcher(job, root, done, keep_tiles, owner.check, cpus, again=again)


def stitch_store(root: Group, stitcher: Stitcher, keep_tiles: bool, quiet: bool, summary: RunSummary, owner: Owner) -> None:
    """Every tile is done: stitch the chunks still to do, mark the store complete, then drop tiles/ (unless kept).

    Most chunks were stitched while inference went on (`Stitcher`); what is
    left is the last rows. Complete first: a crash before tiles/ is gone
    leaves a complete store with tiles to spare, never a store that says
    "stitching" with nothing to stitch.
    """
    from segbatch.progress import progress_bar

    ledger = finished_or_fail(root, range(len(stitcher.job.tiles)))
    skipped = frozenset(t for t, stats in ledger.items() if stats.get("skipped"))
    update_attrs(root, status="stitching")
    with progress_bar(stitcher.left(), "stitching", "chunk", quiet) as bar:
        after = stitcher.drain(bar)
    summary.stitch_seconds = after
    owner.renew()
    owner.check()
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=skipped_problems(skipped),
        summary={
            "tiles": len(stitcher.job.tiles),
            "skipped_tiles": len(skipped),
            "inference_seconds": round(summary.seconds, 3),
            "stitch_seconds": round(after, 3),  # the stitch after inference ended: what it added to the run's wall time
            **stitcher.figures(),
            "actors": summary.actors,
            "device": summary.device,
            **({"actors_per_gpu": summary.actors_per_gpu} if summary.actors_per_gpu else {}),
            "tiles_kept": keep_tiles,
            "stages": stage_totals(ledger),
        },
    )
    if not keep_tiles:
        del root["tiles"]  # through the store's own filesystem: a folder here, keys in an object store
        consolidate(root)


def skipped_problems(skipped: frozenset[int]) -> list[dict[str, Any]]:
    """The store's `problems` for a raster: one compact entry listing the all-nodata tiles as half-open id ranges."""
    if not skipped:
        return []
    return [{"kind": "skipped_tiles", "reason": "all nodata", "tiles": index_ranges(skipped), "count": len(skipped)}]
