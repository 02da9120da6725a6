"""The stitcher: blend overlapping tiles back into full-resolution rasters, one output chunk per task.

Each output chunk is one tile's core; a task takes a run of consecutive
chunks, reads every tile whose weights reach them once (neighbouring chunks
share most of their tiles), blends the probabilities with the border-aware
weights of `segbatch.tiling`, takes the argmax after blending, and writes
each chunk: one writer per chunk, memory bounded by the tiles of one run, so
a raster of any size stitches in streaming fashion.

Pure: it imports neither the engine nor the model (a stitch task never loads
torch); a `StitchJob` says all it needs.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbatch.lease import check_fence
from segbatch.store import NODATA_LABEL, ledger_array, open_store, record_unit, write_region
from segbatch.tilestore import PROB_NODATA, PROB_SCALE
from segbatch.tiling import TilePlan, blend_weights

CHUNKS_PER_TASK = 16  # a run of consecutive chunks (row-major) shares most of its tiles
TILE_CACHE = 12  # tiles kept decoded per task: the 3x3 around a chunk plus the next column
TASKS_IN_FLIGHT_PER_CPU = 2


@dataclass(frozen=True)
class StitchJob:
    """What a stitch task needs: the store with a complete tiles/, its tile plan, and the run that owns it.

    The output arrays (their dtypes, whether uncertainty and confidence exist)
    are read from the store itself.
    """

    store: str  # absolute location: a path or a URL
    tiles: TilePlan  # the plan tiles/ was written with: tile i's core is output chunk i
    run: str  # the run holding the store's lease: every write is fenced by it


def stitch_chunks(job: StitchJob, chunk_ids: Sequence[int], skipped: frozenset[int]) -> int:
    """Blend and write the output chunks `chunk_ids` (tile cores); returns how many were written.

    Each chunk is tile `cid`'s core, so its digests go into that tile's ledger
    entry (written by this task alone, after the chunk): what `verify` checks.
    Every write is fenced by the run's lease, like a worker's.
    """
    root = open_store(job.store, mode="r+")
    cache = _TileCache(root, "uncertainty" in root)
    for cid in chunk_ids:
        check_fence(job.store, job.run)
        digests = _stitch_one(root, job, cid, skipped, cache)
        entry = json.loads(str(ledger_array(root)[cid]) or "{}")
        check_fence(job.store, job.run)
        record_unit(root, cid, {**entry, "chunks": digests})
    return len(chunk_ids)


class _TileCache:
    """The last few decoded tiles (probabilities, uncertainty, weights): in row-major order a chunk's
    neighbours were mostly read for the chunk before it, so each tile is decoded about 3 times, not 9."""

    def __init__(self, root: Any, has_unc: bool, size: int = TILE_CACHE) -> None:
        self.root, self.has_unc, self.size = root, has_unc, size
        self.tiles: OrderedDict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = OrderedDict()

    def get(self, job: StitchJob, tid: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if tid in self.tiles:
            self.tiles.move_to_end(tid)
            return self.tiles[tid]
        probs = self.root["tiles/probs"][tid]
        unc = self.root["tiles/uncertainty"][tid] if self.has_unc else None
        self.tiles[tid] = (probs, unc, blend_weights(job.tiles[tid], job.tiles.overlap))
        if len(self.tiles) > self.size:
            self.tiles.popitem(last=False)
        return self.tiles[tid]


def _stitch_one(root: Any, job: StitchJob, cid: int, skipped: frozenset[int], cache: _TileCache) -> dict[str, str]:
    tiles = job.tiles
    core = tiles[cid].core
    probs_sum: np.ndarray | None = None
    weight_sum = np.zeros((core.height, core.width), np.float32)
    unc_sum = np.zeros_like(weight_sum)
    has_unc = "uncertainty" in root
    for tid in tiles.contributors(cid):
        if tid in skipped:
            continue
        tile = tiles[tid]
        inter = tile.window.intersect(core)
        if inter is None:
            continue
        ty, tx = inter.row - tile.window.row, inter.col - tile.window.col
        ys, xs = slice(ty, ty + inter.height), slice(tx, tx + inter.width)
        tile_probs, tile_unc, tile_w = cache.get(job, tid)
        w = tile_w[ys, xs]
        if not w.any():
            continue
        q = tile_probs[:, ys, xs]
        w = w * (q[0] != PROB_NODATA)
        oy, ox = inter.row - core.row, inter.col - core.col
        region = (slice(oy, oy + inter.height), slice(ox, ox + inter.width))
        if probs_sum is None:
            probs_sum = np.zeros((q.shape[0], core.height, core.width), np.float32)
        probs_sum[(slice(None), *region)] += w * (q.astype(np.float32) / PROB_SCALE)
        weight_sum[region] += w
        if tile_unc is not None:
            unc_sum[region] += w * np.nan_to_num(tile_unc[ys, xs].astype(np.float32))
    valid = weight_sum > 0
    out_dtype = root["entropy"].dtype
    labels = np.full(weight_sum.shape, NODATA_LABEL, np.uint8)
    entropy = np.full(weight_sum.shape, np.nan, out_dtype)
    confidence = np.full(weight_sum.shape, np.nan, out_dtype)
    if probs_sum is not None and valid.any():
        p = probs_sum[:, valid] / weight_sum[valid]
        p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-12)  # undo the uint8 rounding drift
        labels[valid] = p.argmax(axis=0)
        confidence[valid] = p.max(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy[valid] = -(p * np.where(p > 0, np.log(p), 0.0)).sum(axis=0)
    outputs = {"labels": labels, "entropy": entropy}
    if "confidence" in root:  # stores made before it existed are still stitched
        outputs["confidence"] = confidence
    if has_unc:
        unc = np.full(weight_sum.shape, np.nan, out_dtype)
        unc[valid] = unc_sum[valid] / weight_sum[valid]
        outputs["uncertainty"] = unc
    return write_region(root, core.slices, outputs)


def run_stitch(job: StitchJob, skipped: frozenset[int], quiet: bool) -> float:
    """Stitch every output chunk with Ray tasks (bounded in flight); returns the seconds it took."""
    import time

    import ray

    from segbatch.progress import progress_bar

    started = time.perf_counter()
    task = ray.remote(num_cpus=1, max_retries=3)(stitch_chunks)
    ids = list(range(len(job.tiles)))
    batches = [ids[i : i + CHUNKS_PER_TASK] for i in range(0, len(ids), CHUNKS_PER_TASK)]
    limit = max(1, int(ray.cluster_resources().get("CPU", 1)) * TASKS_IN_FLIGHT_PER_CPU)  # type: ignore[no-untyped-call]
    job_ref = ray.put(job)
    in_flight: list[Any] = []
    with progress_bar(len(ids), "stitching", "chunk", quiet) as bar:
        for batch in batches:
            if len(in_flight) >= limit:
                ready, in_flight = ray.wait(in_flight, num_returns=1)
                bar.update(ray.get(ready[0]))
            in_flight.append(task.remote(job_ref, batch, skipped))
        for ref in in_flight:
            bar.update(ray.get(ref))
    return time.perf_counter() - started
