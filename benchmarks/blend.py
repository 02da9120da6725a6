"""Mpx/s of the stitcher's blend alone (`segbatch.stitch.blend_chunk`), on one core, over synthetic tiles.

    OMP_NUM_THREADS=1 python -m benchmarks.blend [--classes 11] [--tile 512] [--overlap 64] [--chunks 3x4] [--repeats 5]

Plans a raster of --chunks output chunks (each a tile's core), makes every
tile's uint8 probabilities (a seeded softmax of random logits, quantised as
the workers store them) and float uncertainty in memory, then blends every
chunk from its contributing tiles with a fresh BlendCache, as a stitch task
does: no Zarr, no compression, only the arithmetic. numpy's elementwise
loops run on one thread, and the time is this process's CPU time (steady on
a shared machine), so the figure is per core. Reports the best of --repeats,
in output megapixels per second, for each output float dtype.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from segbatch.stitch import BlendCache, TileOutput, blend_chunk
from segbatch.tilestore import PROB_SCALE
from segbatch.tiling import TilePlan, plan_tiles


def synthetic_tiles(plan: TilePlan, classes: int, float_dtype: np.dtype, seed: int) -> list[TileOutput]:
    """Every tile of `plan`, stored as the workers store them: uint8 probabilities and float uncertainty."""
    rng = np.random.default_rng(seed)
    tiles = []
    for tile in plan:
        logits = rng.standard_normal((classes, tile.window.height, tile.window.width), np.float32) * 2
        probs = np.exp(logits - logits.max(axis=0))
        probs /= probs.sum(axis=0)
        unc = rng.random((tile.window.height, tile.window.width), np.float32).astype(float_dtype)
        tiles.append(TileOutput(tile, np.rint(probs * PROB_SCALE).astype(np.uint8), unc))
    return tiles


def megapixels_per_second(plan: TilePlan, tiles: list[TileOutput], float_dtype: np.dtype, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        cache = BlendCache(plan.overlap)
        start = time.process_time()
        for cid in range(len(plan)):
            blend_chunk(plan[cid].core, [tiles[t] for t in plan.contributors(cid)], cache, float_dtype, uncertainty=True)
        best = min(best, time.process_time() - start)
    return plan.height * plan.width / best / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--chunks", default="3x4", help="rows x columns of output chunks")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows, cols = (int(v) for v in args.chunks.split("x"))
    core = args.tile - 2 * args.overlap
    plan = plan_tiles(rows * core, cols * core, args.tile, args.overlap)
    print(f"{plan.height}x{plan.width} px: {len(plan)} chunks of {core}x{core}, tile {args.tile}, overlap {args.overlap}, {args.classes} classes")
    print(f"{'outputs':<10} {f'Mpx/s per core (best of {args.repeats})':>30}")
    for name in ("float32", "float16"):
        dtype = np.dtype(name)
        tiles = synthetic_tiles(plan, args.classes, dtype, seed=0)
        print(f"{name:<10} {megapixels_per_second(plan, tiles, dtype, args.repeats):>30.1f}")


if __name__ == "__main__":
    main()
