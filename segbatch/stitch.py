"""The stitcher: blend overlapping tiles back into full-resolution rasters, one output chunk per task.

Each output chunk is one tile's core; a task reads, from every tile whose
weights reach that core, only the blocks it needs, blends the probabilities
with the border-aware weights of `segbatch.tiling`, takes the argmax after
blending, and writes the chunk: one writer per chunk, memory bounded by a few
tiles, so a raster of any size stitches in streaming fashion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segbatch.engine.tiles import PROB_NODATA, PROB_SCALE, RasterJob
from segbatch.store import NODATA_LABEL, open_store
from segbatch.tiling import blend_weights

CHUNKS_PER_TASK = 8
TASKS_IN_FLIGHT_PER_CPU = 2


def stitch_chunks(job: RasterJob, chunk_ids: Sequence[int], skipped: frozenset[int]) -> int:
    """Blend and write the output chunks `chunk_ids` (tile cores); returns how many were written."""
    from pathlib import Path

    root = open_store(Path(job.store), mode="r+")
    for cid in chunk_ids:
        _stitch_one(root, job, cid, skipped)
    return len(chunk_ids)


def _stitch_one(root: Any, job: RasterJob, cid: int, skipped: frozenset[int]) -> None:
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
        w = blend_weights(tile, tiles.overlap)[ty : ty + inter.height, tx : tx + inter.width]
        if not w.any():
            continue
        q = root["tiles/probs"][tid, :, ty : ty + inter.height, tx : tx + inter.width]
        w = w * (q[0] != PROB_NODATA)
        oy, ox = inter.row - core.row, inter.col - core.col
        region = (slice(oy, oy + inter.height), slice(ox, ox + inter.width))
        if probs_sum is None:
            probs_sum = np.zeros((q.shape[0], core.height, core.width), np.float32)
        probs_sum[(slice(None), *region)] += w * (q.astype(np.float32) / PROB_SCALE)
        weight_sum[region] += w
        if has_unc:
            unc = root["tiles/uncertainty"][tid, ty : ty + inter.height, tx : tx + inter.width].astype(np.float32)
            unc_sum[region] += w * np.nan_to_num(unc)
    valid = weight_sum > 0
    out_dtype = root["entropy"].dtype
    labels = np.full(weight_sum.shape, NODATA_LABEL, np.uint8)
    entropy = np.full(weight_sum.shape, np.nan, out_dtype)
    if probs_sum is not None and valid.any():
        p = probs_sum[:, valid] / weight_sum[valid]
        p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-12)  # undo the uint8 rounding drift
        labels[valid] = p.argmax(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy[valid] = -(p * np.where(p > 0, np.log(p), 0.0)).sum(axis=0)
    root["labels"][core.slices] = labels
    root["entropy"][core.slices] = entropy
    if has_unc:
        unc = np.full(weight_sum.shape, np.nan, out_dtype)
        unc[valid] = unc_sum[valid] / weight_sum[valid]
        root["uncertainty"][core.slices] = unc


def run_stitch(job: RasterJob, skipped: frozenset[int], quiet: bool) -> float:
    """Stitch every output chunk with Ray tasks (bounded in flight); returns the seconds it took."""
    import time

    import ray

    from segbatch.progress import progress_bar

    started = time.perf_counter()
    task = ray.remote(num_cpus=1, max_retries=3)(stitch_chunks)
    ids = list(range(len(job.tiles)))
    batches = [ids[i : i + CHUNKS_PER_TASK] for i in range(0, len(ids), CHUNKS_PER_TASK)]
    limit = max(1, int(ray.cluster_resources().get("CPU", 1)) * TASKS_IN_FLIGHT_PER_CPU)
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
