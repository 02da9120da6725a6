"""Tile plans for rasters: cores aligned with the output chunks, overlapping read windows, blend weights.

A tile is read as its core plus a margin of `overlap` pixels on every side,
because pixels near a tile's edge lack context: the model needs its effective
receptive field around a pixel to label it as it would in the whole image.
Each core is exactly one output chunk, so the worker that runs a tile and the
stitcher task that writes a chunk are the only writers of their chunks.

Blending (docs/architecture.md, "Stitching: what was measured"): inside its core a
tile has weight 1; beyond the core its weight falls with a cosine over the
inner half of the margin and is 0 on the outer half, whose pixels saw the
least context. Every pixel lies in exactly one core, so weights never sum to
0, and a raster edge (where no neighbour exists) keeps full weight: no seams
and no dark frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from segbatch.errors import InputError


@dataclass(frozen=True)
class Window:
    """Rows [row, row + height) and columns [col, col + width) of the raster."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def intersect(self, other: Window) -> Window | None:
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row + self.height, other.row + other.height), min(self.col + self.width, other.col + other.width)
        return Window(r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None


@dataclass(frozen=True)
class Tile:
    """One unit of raster work: the core it owns (an output chunk) and the window it reads."""

    id: int
    grid_row: int
    grid_col: int
    core: Window
    window: Window


@dataclass(frozen=True)
class TilePlan:
    """A grid of tiles over a height x width raster (row-major ids)."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def core(self) -> int:
        """Side of a core, and of an output chunk."""
        return self.tile - 2 * self.overlap

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.core)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.core)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, tile_id: int) -> Tile:
        if not 0 <= tile_id < len(self):
            raise IndexError(tile_id)
        r, c = divmod(tile_id, self.cols)
        core = Window(r * self.core, c * self.core, min(self.core, self.height - r * self.core), min(self.core, self.width - c * self.core))
        row0, h = _read_span(core.row, self.overlap, self.tile, self.height)
        col0, w = _read_span(core.col, self.overlap, self.tile, self.width)
        return Tile(tile_id, r, c, core, Window(row0, col0, h, w))

    def contributors(self, tile_id: int) -> list[int]:
        """Tiles whose weights reach into `tile_id`'s core (itself included): what its output chunk blends."""
        core = self[tile_id].core
        reach = self.overlap // 2 + 1
        r0, r1 = max(0, (core.row - reach) // self.core), min(self.rows - 1, (core.row + core.height + reach - 1) // self.core)
        c0, c1 = max(0, (core.col - reach) // self.core), min(self.cols - 1, (core.col + core.width + reach - 1) // self.core)
        return [r * self.cols + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    """Plan tiles of side `tile` whose cores (side tile - 2 * overlap) partition the raster.

    The overlap should cover the model's effective receptive field (64 is about
    the least for SegNet-Basic; SegNet needs more); a tile not larger than twice
    the overlap has no core and is refused.
    """
    if height < 1 or width < 1:
        raise InputError(f"the raster is empty ({width}x{height})")
    if overlap < 0:
        raise InputError(f"--overlap must be >= 0, got {overlap}")
    if tile <= 2 * overlap:
        raise InputError(f"--tile {tile} must be larger than twice --overlap {overlap} (the margins would leave no core)")
    return TilePlan(height, width, tile, overlap)


def _read_span(start: int, overlap: int, tile: int, size: int) -> tuple[int, int]:
    """Start and length of the read window along one axis: the core plus margins, kept inside the raster.

    A window that would cross the raster's edge is shifted inward instead of
    padded, so edge tiles see real pixels (no black border) whenever the raster
    is at least a tile long; every window is then a whole tile.
    """
    lo, hi = start - overlap, start - overlap + tile  # a short (last) core still reads a whole tile
    if hi - lo > size:
        return 0, size
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = lo - (hi - size), size
    return lo, hi - lo


def axis_weights(window_start: int, window_length: int, core_start: int, core_length: int, overlap: int) -> np.ndarray:
    """1-D blend weights over a window: 1 on the core, a cosine fall over overlap/2 pixels beyond it, then 0."""
    pos = np.arange(window_start, window_start + window_length, dtype=np.float64) + 0.5  # pixel centres
    beyond = np.maximum(core_start - pos, pos - (core_start + core_length))  # > 0 outside the core
    ramp = overlap / 2
    w = np.ones(window_length)
    outside = beyond > 0
    if ramp > 0:
        w[outside] = np.where(beyond[outside] < ramp, 0.5 * (1 + np.cos(np.pi * beyond[outside] / ramp)), 0.0)
    else:
        w[outside] = 0.0
    return w.astype(np.float32)


def blend_weights(tile: Tile, overlap: int) -> np.ndarray:
    """(height, width) weights of a tile's window: the outer product of its two axis weights."""
    wy = axis_weights(tile.window.row, tile.window.height, tile.core.row, tile.core.height, overlap)
    wx = axis_weights(tile.window.col, tile.window.width, tile.core.col, tile.core.width, overlap)
    return cast(np.ndarray, wy[:, None] * wx[None, :])


def padded_side(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n: a side every pooling level halves exactly."""
    return -(-n // multiple) * multiple
