"""A cheap, deterministic look at the values a store's array holds: finite values from chunks spread evenly over it.

What the readers that need a distribution without reading everything use
(export's colour scale, audit's default threshold). Only chunk reads: the
same chunks, so the same values, every time.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _sample_grid(arr: Any) -> tuple[int, ...]:
    """The chunk grid sample_values spreads its sample over: a frame or image stack's first axis, else the whole grid."""
    grid = tuple(-(-int(n) // int(c)) for n, c in zip(arr.shape, arr.chunks))
    return grid[:1] if arr.ndim == 3 else grid


def chunk_count(arr: Any) -> int:
    """How many chunks sample_values spreads its sample over (a stack's chunks along its first axis, a raster's whole grid)."""
    return int(np.prod(_sample_grid(arr)))


def sample_values(arr: Any, count: int = 16) -> np.ndarray:
    """Finite values of up to `count` chunks spread evenly over an array: a cheap, deterministic look at its distribution.

    Frame and image stacks are sampled along their first axis (each sample the
    chunk at the origin of a frame or image, which always holds pixels); a 2-D
    raster over its whole chunk grid, so a mosaic's nodata margins do not
    decide the sample.
    """
    grid = _sample_grid(arr)
    values = []
    for flat in np.unique(np.linspace(0, max(0, chunk_count(arr) - 1), count).astype(np.int64)):
        index: tuple[int | np.integer[Any], ...] = (int(flat), *([0] * (arr.ndim - 1))) if arr.ndim == 3 else np.unravel_index(int(flat), grid)
        region = tuple(slice(int(i) * c, (int(i) + 1) * c) for i, c in zip(index, arr.chunks))
        block = np.asarray(arr[region], np.float32).ravel()
        values.append(block[np.isfinite(block)])
    return np.concatenate(values) if values else np.zeros(0, np.float32)
