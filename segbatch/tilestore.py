"""The raster tile store (tiles/ in a raster store): its arrays and their encoding.

A raster run writes each tile's outputs into tiles/ (one chunk of every
tiles/ array per tile, written whole by that tile's worker alone); the
stitcher blends them into the output arrays. tiles/probs holds the mean class
probabilities compactly as uint8, round(p x PROB_SCALE), PROB_NODATA marking a
pixel outside the raster's data; tiles/uncertainty holds the float
uncertainty, NaN outside. Both are PAD_TO-padded to `tile_side`.

Pure: neither the model nor the engine (no torch), so a stitch task imports
only this, the store and the tiling.
"""

from __future__ import annotations

from typing import Any

from segbatch import kinds
from segbatch.tiling import TilePlan, padded_side

PROB_SCALE = 254  # uint8 probabilities: round(p * 254); 255 is nodata
PROB_NODATA = 255
PAD_TO = 32  # tiles/ sides: the largest window rounded up


def tile_side(tiles: TilePlan) -> tuple[int, int]:
    """(height, width) of the tiles/ arrays: the largest tile window, padded to PAD_TO."""
    return padded_side(min(tiles.tile, tiles.height), PAD_TO), padded_side(min(tiles.tile, tiles.width), PAD_TO)


def tiles_removed(root: Any, kind: str) -> bool:
    """Whether `root` is a store of a tiled kind (a raster's) whose tiles/ were removed after its stitch (as they are, unless --keep-tiles).

    Its output chunks are blends of tiles no longer kept, so no unit can be
    redone: --resume refuses it, and only --overwrite makes it again.
    """
    return kinds.kind(kind).tiled and "tiles" not in root
