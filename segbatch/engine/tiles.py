"""Raster work units: a tile's window in, its outputs into the tile store (tiles/ in the store).

Each tile owns one chunk of every tiles/ array (written whole, by its worker
alone). Mean class probabilities are stored compactly as uint8 (p x 254; 255
marks nodata), which is what the stitcher blends. A tile with no valid pixel
is skipped without running the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbatch.engine.worker import ModelWorker, require_readable
from segbatch.mc import derive_seed, mc_predict
from segbatch.sources.raster import RasterPlan, read_window
from segbatch.tiling import TilePlan, padded_side

PROB_SCALE = 254  # uint8 probabilities: round(p * 254); 255 is nodata
PROB_NODATA = 255
PAD_TO = 32  # tiles/ sides: the largest window rounded up


@dataclass(frozen=True)
class RasterJob:
    """Everything a tile worker (and a stitch task) needs besides the tile id."""

    store: str
    checkpoint: str
    plan: RasterPlan
    tiles: TilePlan
    samples: int
    seed: int
    float_dtype: str
    threads: int
    tile_side: tuple[int, int]  # (height, width) of the tiles/ arrays: the largest window, padded to PAD_TO
    precision: str = "fp32"
    run: str = ""  # the run that owns the store (its lease): every write is fenced by it


def tile_side(tiles: TilePlan) -> tuple[int, int]:
    return padded_side(min(tiles.tile, tiles.height), PAD_TO), padded_side(min(tiles.tile, tiles.width), PAD_TO)


class TileWorker(ModelWorker):
    """Segments tiles of a raster job; one per Ray actor, model loaded once."""

    def __init__(self, job: RasterJob) -> None:
        super().__init__(job.checkpoint, job.store, job.threads, job.run)
        self.job = job
        require_readable(job.plan.path)
        self.pool = 2 ** (len(self.model.encoders))  # each pooling level halves the side

    def process(self, tile_id: int) -> dict[str, Any]:
        """Run one tile (or skip it when it is all nodata), write its chunks, then its ledger entry."""
        import torch

        started = time.perf_counter()
        job = self.job
        tile = job.tiles[tile_id]
        data, valid = read_window(job.plan, tile.window)
        stats: dict[str, Any] = {"unit": tile_id, "skipped": not valid.any()}
        if valid.any():
            h, w = valid.shape
            # reflect-pad to a side every pooling level halves exactly (a raster smaller than a tile, say)
            ph, pw = padded_side(h, self.pool) - h, padded_side(w, self.pool) - w
            x = self.to_device(data[None])
            if ph or pw:
                x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            res = mc_predict(self.model, x, samples=job.samples, seed=derive_seed(job.seed, tile_id), precision=job.precision)
            probs = res["probs"][0, :, :h, :w].cpu().numpy()
            side_h, side_w = job.tile_side
            q = np.full((probs.shape[0], side_h, side_w), PROB_NODATA, np.uint8)
            q[:, :h, :w] = np.where(valid, np.rint(probs * PROB_SCALE), PROB_NODATA).astype(np.uint8)
            tile_outputs = {"tiles/probs": q[None]}
            if "uncertainty" in res:
                unc = np.full((side_h, side_w), np.nan, job.float_dtype)
                unc[:h, :w] = np.where(valid, res["uncertainty"][0, :h, :w].cpu().numpy(), np.nan)
                tile_outputs["tiles/uncertainty"] = unc[None]
            # tiles/ is removed after the stitch: the digests that verify checks are those of the stitched chunks
            self.write([slice(tile_id, tile_id + 1)], tile_outputs, digests=False)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        self.record(tile_id, stats)
        return stats
