"""Rasters as a source: one unit per tile (core + overlap), tiles/ written by the workers, then a blended stitch.

Same engine, ledger and resume as every source: a tile's worker writes its
own chunk of each tiles/ array (mean class probabilities as uint8, and the
uncertainty), the stitcher writes each output chunk once. The store is
marked complete, then tiles/ is removed unless --keep-tiles; `segbatch
stitch` re-runs the stitch alone from a kept tiles/.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
from segbatch.engine.job import JobBasics, RunConfig, source_identity
from segbatch.engine.pipeline import require_readable
from segbatch.engine.run import RunSummary, finished_or_fail, recorded_outcome, stage_totals
from segbatch.engine.session import ray_session
from segbatch.engine.source import Item, UnitReport, Write
from segbatch.engine.stitcher import Stitcher
from segbatch.errors import InputError
from segbatch.lease import Lease, LeaseKeeper
from segbatch.problems import index_ranges
from segbatch.progress import note
from segbatch.sources.raster import RasterPlan, georeference, geozarr_attrs, probe_raster, read_window
from segbatch.stitch import StitchJob
from segbatch.store import ArraySpec, StoreLayout, consolidate, enclosing_store, open_store, read_store, store_attrs, update_attrs
from segbatch.tilestore import PROB_NODATA, PROB_SCALE, tile_side
from segbatch.tiling import TilePlan, padded_side, plan_tiles


@dataclass(frozen=True)
class RasterJob(JobBasics):
    """The worker half: everything an actor needs besides the tile id (sent once to each)."""

    store_dtype: str  # tiles/uncertainty's dtype (the model step computes in float32; probs are quantised to uint8)
    plan: RasterPlan
    tiles: TilePlan
    tile_side: tuple[int, int]  # (height, width) of the tiles/ arrays: segbatch.tilestore.tile_side
    pool: int  # the model's input sides must be multiples of this (each pooling level halves them)
    resize: None = None
    float_dtype: str = "float32"

    @property
    def model_outputs(self) -> tuple[str, ...]:
        return ("probs", "uncertainty") if self.samples > 0 else ("probs",)

    def check_node(self) -> None:
        require_readable(self.plan.path)

    def read(self, tile_id: int, report: UnitReport) -> Iterator[list[Item]]:
        """The tile's window, reflect-padded to sides the pooling halves exactly; nothing when it is all nodata (skipped)."""
        data, valid = read_window(self.plan, self.tiles[tile_id].window)
        if not valid.any():
            report.skipped = True
            return
        h, w = valid.shape
        ph, pw = padded_side(h, self.pool) - h, padded_side(w, self.pool) - w
        if ph or pw:  # a raster smaller than a tile, say
            data = np.pad(data, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        yield [Item(tile_id, data, info=valid)]

    def to_model(self, x: Any) -> Any:
        return x

    def placer(self, tile_id: int, num_classes: int) -> TilePlacer:
        return TilePlacer(self)

    def unit_stats(self, tile_id: int, report: UnitReport) -> dict[str, Any]:
        return {"unit": tile_id, "skipped": report.skipped}


class TilePlacer:
    """A tile's outputs into its own chunk of tiles/: probabilities as uint8 (nodata 255), uncertainty NaN outside the data."""

    def __init__(self, job: RasterJob) -> None:
        self.job = job

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        (item,) = items
        valid = item.info
        h, w = valid.shape
        side_h, side_w = self.job.tile_side
        probs = outputs["probs"][0, :h, :w].transpose(2, 0, 1)  # the model step hands probs channel-last
        q = np.full((probs.shape[0], side_h, side_w), PROB_NODATA, np.uint8)
        q[:, :h, :w] = np.where(valid, np.rint(probs * PROB_SCALE), PROB_NODATA).astype(np.uint8)
        arrays = {"tiles/probs": q[None]}
        if "uncertainty" in outputs:
            unc = np.full((side_h, side_w), np.nan, self.job.store_dtype)
            unc[:h, :w] = np.where(valid, outputs["uncertainty"][0, :h, :w], np.nan)
            arrays["tiles/uncertainty"] = unc[None]
        # tiles/ is removed after the stitch: the digests `verify` checks are those of the stitched chunks
        return [Write((slice(item.index, item.index + 1),), arrays, digests=False)]

    def close(self) -> list[Write]:
        return []


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
        extra = [ArraySpec("tiles/probs", (n, k, side_h, side_w), (1, k, side_h, side_w), "uint8", PROB_NODATA, ("tile", "class", "ty", "tx"))]
        if cfg.samples > 0:
            extra.append(ArraySpec("tiles/uncertainty", (n, side_h, side_w), (1, side_h, side_w), cfg.float_dtype, np.nan, ("tile", "ty", "tx")))
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

    def units(self, attrs: Mapping[str, Any]) -> list[int]:
        return list(range(len(self.tiles)))

    def job(self, store: str, checkpoint: str, run: str) -> RasterJob:
        cfg = self.cfg
        return RasterJob(
            **JobBasics.of(cfg, store, checkpoint, run),
            store_dtype=cfg.float_dtype,
            plan=self.plan,
            tiles=self.tiles,
            tile_side=tile_side(self.tiles),
            pool=2 ** len(self.ckpt.model.encoders),
        )

    def size(self, tile_id: int) -> int:
        return 1

    def describe(self, tile_id: int) -> str:
        return f"tile {tile_id} (window {self.tiles[tile_id].window})"

    def check_resume(self, root: Any, attrs: Mapping[str, Any]) -> None:
        if "tiles" not in root and attrs["status"] == "complete":
            raise InputError(f"{self.cfg.out} is complete and its tiles/ were removed after stitching: nothing to resume; use --overwrite to run again")
        if "tiles" not in root:
            raise InputError(f"{self.cfg.out} has no tiles/ left to resume from (status {attrs['status']}); use --overwrite to run again")

    def begin(self, root: Any, done: Mapping[int, Mapping[str, Any]], keeper: Any) -> None:
        """Start the stitcher: chunks are blended as their tiles finish (a job's groups are fenced by the lease at its root)."""
        job = StitchJob(store=location.absolute(self.cfg.out), tiles=self.tiles, run=keeper.lease.run, lease=location.absolute(keeper.store))
        self.stitcher = new_stitcher(job, root, done, self.cfg.keep_tiles, keeper)

    def unit_done(self, unit: int, entry: Mapping[str, Any]) -> None:
        self.stitcher.tile_done(unit, entry)

    def finish(self, root: Any, units: Sequence[int], ran: Sequence[int], summary: RunSummary, keeper: Any) -> None:
        stitch_store(root, self.stitcher, self.cfg.keep_tiles, self.cfg.quiet, summary, keeper)


def new_stitcher(job: StitchJob, root: Any, done: Mapping[int, Mapping[str, Any]], keep_tiles: bool, keeper: LeaseKeeper, again: bool = False) -> Stitcher:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    return Stitcher(job, root, done, keep_tiles, keeper.check, cpus, again=again)


def stitch_store(root: Any, stitcher: Stitcher, keep_tiles: bool, quiet: bool, summary: RunSummary, keeper: LeaseKeeper) -> None:
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
    keeper.renew()
    keeper.check()
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


def restitch(path: Path | str, quiet: bool, verbose: int = 0, group: str | None = None) -> RunSummary:
    """`segbatch stitch STORE [--group NAME]`: blend a store's kept tiles again (`verbose` >= 2: Ray's own logs on stderr).

    A group of a job store is stitched under the job's lease (its root's), as the job's own writes are.
    """
    from segbatch.jobstore import group_of

    target = group_of(path, group, "stitch")
    root, attrs, _ = read_store(target)  # attributes and ledger checked before the store is claimed
    if attrs["source"]["kind"] != "raster":
        raise InputError(f"{target} is a {attrs['source']['kind']} store; only raster stores are stitched")
    if "tiles" not in root:
        raise InputError(f"{target} has no tiles/ (they are removed after a stitch unless the run had --keep-tiles)")
    owner = enclosing_store(target) or target  # one run owns a store (a job's group: the job's root), not while another holds it
    lease = Lease.new()
    src = attrs["source"]
    tiles = plan_tiles(src["height"], src["width"], src["tile"], src["overlap"])
    job = StitchJob(store=location.absolute(target), tiles=tiles, run=lease.run, lease=location.absolute(owner))
    summary = RunSummary(units=len(job.tiles), noun="tile")
    with LeaseKeeper(owner, lease) as keeper, ray_session(None, verbose):
        root = open_store(target, mode="r+")  # as it is now that this run holds it
        attrs = store_attrs(root)
        with recorded_outcome(root, len(job.tiles), "tiles"):
            done = finished_or_fail(root, range(len(job.tiles)))
            # every chunk again only from tiles a run kept whole; a run stopped mid-stitch deleted the tiles it had used up,
            # so then only the chunks it had not stitched yet (their tiles are all still there)
            again = bool((attrs.get("summary") or {}).get("tiles_kept"))
            stitcher = new_stitcher(job, root, done, keep_tiles=True, keeper=keeper, again=again)
            stitch_store(root, stitcher, keep_tiles=True, quiet=quiet, summary=summary, keeper=keeper)
    return summary
