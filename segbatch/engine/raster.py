"""The raster driver: plan tiles, create the store (tiles/ included), run tiles on actors, stitch, finalise.

Same engine, ledger and resume as video: one unit per tile, workers write
their own shards of tiles/, the stitcher writes each output chunk once. After
a successful stitch tiles/ is removed unless --keep-tiles; `segbatch stitch`
re-runs the stitch alone from a kept tiles/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
from segbatch.engine.driver import (
    RunSummary,
    check_target,
    model_attrs,
    pool_size,
    ray_session,
    recorded_outcome,
    replace_store,
    resolve_model,
    run_units,
)
from segbatch.engine.job import RunConfig, config_digest, software_versions, source_identity
from segbatch.engine.tiles import PROB_NODATA, RasterJob, TileWorker, tile_side
from segbatch.engine.worker import index_ranges
from segbatch.errors import InputError, RunError
from segbatch.lease import Lease, LeaseKeeper, claim
from segbatch.progress import note
from segbatch.sources.raster import georeference, probe_raster
from segbatch.store import (
    ArraySpec,
    StoreLayout,
    base_attrs,
    consolidate,
    create_store,
    finished_units,
    open_store,
    reopen_for_resume,
    store_attrs,
    update_attrs,
)
from segbatch.tiling import plan_tiles


def run_raster(cfg: RunConfig) -> RunSummary:
    """Segment a georeferenced raster into a Zarr store: tiles on actors, then a blended stitch."""
    from segbatch.model.checkpoint import load_checkpoint

    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if cfg.extra_outputs or cfg.resize or cfg.frames or cfg.hwaccel:
        raise InputError("--outputs, --resize, --frames and --hwaccel are for video; rasters run at their own resolution")
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model, cfg.quiet))
    plan = probe_raster(cfg.input, cfg.bands, ckpt.spec.in_channels)
    if plan.crs_wkt is None:
        note(f"warning: {cfg.input} has no CRS; the store will have pixel coordinates only", cfg.quiet)
    tiles = plan_tiles(plan.height, plan.width, cfg.tile, cfg.overlap)
    job = RasterJob(
        store=location.absolute(cfg.out),
        checkpoint=location.absolute(ckpt.path),
        plan=plan,
        tiles=tiles,
        samples=cfg.samples,
        seed=cfg.seed,
        float_dtype=cfg.float_dtype,
        threads=max(1, int(cfg.cpus_per_actor)),
        tile_side=tile_side(tiles),
        precision=cfg.precision,
        run=lease.run,
    )
    config = {
        "source": source_identity(cfg.input),
        "model_sha256": ckpt.sha256,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "bands": list(plan.bands),
        "tile": cfg.tile,
        "overlap": cfg.overlap,
        "float_dtype": cfg.float_dtype,
        "precision": cfg.precision,
        "software": software_versions(),
    }
    check_target(cfg, lease, ckpt.path)
    with LeaseKeeper(cfg.out, lease) as keeper, ray_session(cfg.address):
        n_actors, gpus = pool_size(cfg, len(tiles))
        root, done = _prepare_raster_store(cfg, job, ckpt, config, keeper)
        return run_units(
            cfg,
            TileWorker,
            job,
            root,
            [t for t in range(len(tiles)) if t not in done],
            len(tiles),
            (n_actors, gpus),
            keeper,
            size=lambda t: 1,
            describe=lambda t: f"tile {t} (window {tiles[t].window})",
            noun="tile",
            finish=lambda summary, pending: stitch_store(root, job, cfg.keep_tiles, cfg.quiet, summary, keeper),
        )


def _prepare_raster_store(cfg: RunConfig, job: RasterJob, ckpt: Any, config: dict[str, Any], keeper: LeaseKeeper) -> tuple[Any, dict[int, Any]]:
    if location.exists(cfg.out) and cfg.resume:
        root = open_store(cfg.out, mode="r+")
        attrs = store_attrs(root)
        if "tiles" not in root and attrs["status"] == "complete":
            raise InputError(f"{cfg.out} is complete and its tiles/ were removed after stitching: nothing to resume; use --overwrite to run again")
        if "tiles" not in root:
            raise InputError(f"{cfg.out} has no tiles/ left to resume from (status {attrs['status']}); use --overwrite to run again")
        root, _ = reopen_for_resume(cfg.out, config, keeper.lease.run)
        return root, finished_units(root)
    created: tuple[Any, dict[int, Any]] = replace_store(cfg, keeper, lambda: _new_raster_store(cfg, job, ckpt, config, keeper.lease))
    return created


def _new_raster_store(cfg: RunConfig, job: RasterJob, ckpt: Any, config: dict[str, Any], lease: Lease) -> tuple[Any, dict[int, Any]]:
    plan, tiles = job.plan, job.tiles
    geo = georeference(plan)
    k = ckpt.spec.num_classes
    side_h, side_w = job.tile_side
    n = len(tiles)
    extra = [ArraySpec("tiles/probs", (n, k, side_h, side_w), (1, k, side_h, side_w), "uint8", PROB_NODATA, ("tile", "class", "ty", "tx"))]
    if cfg.samples > 0:
        extra.append(ArraySpec("tiles/uncertainty", (n, side_h, side_w), (1, side_h, side_w), job.float_dtype, np.nan, ("tile", "ty", "tx")))
    layout = StoreLayout(
        dims=("y", "x"),
        shape=(plan.height, plan.width),
        chunks=(tiles.core, tiles.core),
        num_classes=k,
        units=n,
        outputs=("labels", "entropy", "confidence", *(("uncertainty",) if cfg.samples > 0 else ())),
        float_dtype=job.float_dtype,
        coords={
            "x": (("x",), geo["x"], {"standard_name": "projection_x_coordinate", "long_name": "x at pixel centres"}),
            "y": (("y",), geo["y"], {"standard_name": "projection_y_coordinate", "long_name": "y at pixel centres"}),
            "spatial_ref": ((), np.array(0, np.int64), geo["spatial_ref"]),
        },
        array_attrs={"grid_mapping": "spatial_ref"},
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
    attrs = base_attrs(source, model_attrs(ckpt), cfg.samples, cfg.seed, config, lease.run) | {"fingerprint": config_digest(config), "geozarr": _geozarr(plan)}
    return create_store(cfg.out, layout, attrs, lease), {}


def _geozarr(plan: Any) -> dict[str, Any]:
    """GeoZarr proj:/spatial: attributes (the CF grid mapping carries the same facts for rioxarray)."""
    x0, dx, _, y0, _, dy = plan.transform
    out: dict[str, Any] = {"spatial:dimensions": ["y", "x"], "spatial:transform": [dx, 0.0, x0, 0.0, dy, y0], "spatial:shape": [plan.height, plan.width]}
    if plan.crs_wkt:
        out["proj:wkt2"] = plan.crs_wkt
    return out


def stitch_store(root: Any, job: RasterJob, keep_tiles: bool, quiet: bool, summary: RunSummary, keeper: LeaseKeeper) -> None:
    """Stitch a store whose tiles are all done, mark it complete, then drop tiles/ (unless kept).

    Complete first: a crash before tiles/ is gone leaves a complete store with
    tiles to spare, never a store that says "stitching" with nothing to stitch.
    """
    from segbatch.stitch import run_stitch

    ledger = finished_units(root)
    missing = [t for t in range(len(job.tiles)) if t not in ledger]
    if missing:
        raise RunError(f"{len(missing)} tiles never finished (first: {missing[0]}); finish with --resume")
    skipped = frozenset(t for t, stats in ledger.items() if stats.get("skipped"))
    update_attrs(root, status="stitching")
    stitch_seconds = run_stitch(job, skipped, quiet)
    summary.stitch_seconds = stitch_seconds
    keeper.renew()
    keeper.check()
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=skipped_problems(skipped),
        summary={
            "tiles": len(job.tiles),
            "skipped_tiles": len(skipped),
            "inference_seconds": round(summary.seconds, 3),
            "stitch_seconds": round(stitch_seconds, 3),
            "actors": summary.actors,
            "device": summary.device,
            "tiles_kept": keep_tiles,
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


def restitch(path: Path | str, quiet: bool) -> RunSummary:
    """`segbatch stitch STORE`: blend a store's kept tiles again."""
    root = open_store(path, mode="r+")
    attrs = store_attrs(root)
    if attrs.get("source", {}).get("kind") != "raster":
        raise InputError(f"{path} is a {attrs.get('source', {}).get('kind')} store; only raster stores are stitched")
    if "tiles" not in root:
        raise InputError(f"{path} has no tiles/ (they are removed after a stitch unless the run had --keep-tiles)")
    lease = Lease.new()
    claim(path, lease)  # one run owns a store: not while another run (or stitch) holds it
    job = _job_from_store(path, root, attrs, lease.run)
    summary = RunSummary(units=len(job.tiles), noun="tile")
    with LeaseKeeper(path, lease) as keeper, ray_session(None):
        with recorded_outcome(root, len(job.tiles), "tiles"):
            stitch_store(root, job, keep_tiles=True, quiet=quiet, summary=summary, keeper=keeper)
    return summary


def _job_from_store(path: Path | str, root: Any, attrs: dict[str, Any], run: str) -> RasterJob:
    from segbatch.sources.raster import plan_from_store

    src = attrs["source"]
    plan = plan_from_store(src, root["spatial_ref"].attrs)
    tiles = plan_tiles(plan.height, plan.width, src["tile"], src["overlap"])
    return RasterJob(
        store=location.absolute(path),
        checkpoint="",
        plan=plan,
        tiles=tiles,
        samples=attrs["samples"],
        seed=attrs["seed"],
        float_dtype=str(root["entropy"].dtype),
        threads=1,
        tile_side=tile_side(tiles),
        run=run,
    )
