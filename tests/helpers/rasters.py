"""Seeded generators of small GeoTIFFs with known CRS, transform, nodata and band values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine


def write_geotiff(
    path: Path,
    height: int = 96,
    width: int = 128,
    bands: int = 3,
    dtype: str = "uint8",
    nodata: float | None = 0,
    crs: str | None = "EPSG:32618",
    transform: Affine | None = None,
    seed: int = 0,
    hole: bool = True,
) -> Path:
    """Band b holds a ramp scaled by b plus noise; with `hole`, a nodata square at the top-left corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    data = np.stack([(xx + yy * 0.5) / (width + height) * 250 * (b + 1) / bands + rng.normal(0, 3, (height, width)) + 5 for b in range(bands)])
    if dtype == "uint16":
        data = data * 40
    data = np.clip(data, 1, None).astype(dtype)
    if hole:
        data[:, :16, :16] = nodata if nodata is not None else 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype=dtype,
        crs=crs,
        transform=transform or Affine(30.0, 0, 500000.0, 0, -30.0, 2700000.0),
        nodata=nodata,
        tiled=True,
        blockxsize=64,
        blockysize=64,
    ) as ds:
        ds.write(data)
    return path
