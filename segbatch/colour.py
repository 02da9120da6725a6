"""Turning labels and uncertainty into pictures a person can read (panels, overlays, thumbnails)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

NODATA_COLOUR = (0, 0, 0)
# Anchors of a perceptually ordered dark-to-bright heat map (after matplotlib's "inferno").
_HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]], nodata: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the model's palette; nodata (255) and unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[nodata] = NODATA_COLOUR
    return lut[labels.astype(np.uint8)]


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) uint8, 0 dark to `vmax` bright; NaN (nodata) is black."""
    t = np.clip(np.nan_to_num(values.astype(np.float32) / max(vmax, 1e-12), nan=0.0), 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(np.int64).clip(0, len(_HEAT) - 2)
    frac = (t - lo)[..., None]
    out = _HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac
    out[np.isnan(values)] = NODATA_COLOUR
    return cast(np.ndarray, out.round().astype(np.uint8))


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Mix an (H, W, 3) uint8 overlay into an image of the same size."""
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).round().astype(np.uint8)
