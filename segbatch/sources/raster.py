"""Rasters through rasterio: a plan of the scene, and windowed reads scaled for the model.

Only windows are ever read, so a scene of any size streams through a worker.
uint8 bands go to the model as they are (/255); other types get a per-band
percentile stretch computed once by the driver from an overview (or a
decimated read) and recorded in the store, so every tile is scaled alike.
Nodata values, internal masks and alpha bands all come through GDAL's mask
band: masked pixels become label 255 and NaN uncertainty.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from segbatch import location
from segbatch.errors import InputError
from segbatch.tiling import Window

STRETCH_PERCENTILES = (2.0, 98.0)
_SAMPLE_SIDE = 1024  # pixels per side of the decimated read used for the stretch


@dataclass(frozen=True)
class RasterPlan:
    """What the driver learns about a raster before any tile is read."""

    path: str
    height: int
    width: int
    bands: tuple[int, ...]  # 1-based band indexes fed to the model, in order
    dtype: str
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]  # GDAL GeoTransform order: x0, dx, rx, y0, ry, dy
    nodata: float | None
    stretch: tuple[tuple[float, float], ...] | None  # per band (low, high); None for uint8


def _open(path: str | Path) -> Any:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(location.gdal_path(path))
    except RasterioIOError as exc:
        if not location.is_url(path) and not Path(path).exists():
            raise InputError(f"{path}: no such file") from None
        raise InputError(f"{path} is not a readable raster ({str(exc).splitlines()[0]})") from None


def probe_raster(path: str | Path, bands: Sequence[int] | None, in_channels: int) -> RasterPlan:
    """Check a raster against the model and plan its reading (bands, scaling, georeferencing)."""
    with _open(path) as ds:
        if bands is None:
            if ds.count != in_channels:
                raise InputError(f"{path} has {ds.count} bands but the model takes {in_channels}; choose them with --bands (e.g. --bands 3,2,1)")
            bands = tuple(range(1, ds.count + 1))
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise InputError(f"--bands {','.join(map(str, bands))}: band {bad[0]} is out of range (the raster has {ds.count})")
        if len(bands) != in_channels:
            raise InputError(f"--bands picks {len(bands)} bands but the model takes {in_channels}")
        t = ds.transform
        if t.b != 0 or t.d != 0:
            raise InputError(f"{path} has a rotated or sheared geotransform; warp it to a north-up grid first (gdalwarp)")
        dtype = ds.dtypes[bands[0] - 1]
        stretch = None if dtype == "uint8" else _percentile_stretch(ds, bands)
        return RasterPlan(
            path=str(path),
            height=ds.height,
            width=ds.width,
            bands=tuple(bands),
            dtype=dtype,
            crs_wkt=ds.crs.to_wkt() if ds.crs else None,
            transform=tuple(t.to_gdal()),
            nodata=ds.nodata,
            stretch=stretch,
        )


def _percentile_stretch(ds: Any, bands: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """(2nd, 98th) percentile per band, from a decimated read (GDAL serves it from overviews when they exist)."""
    from rasterio.enums import Resampling

    scale = max(1, max(ds.height, ds.width) // _SAMPLE_SIDE)
    shape = (len(bands), max(1, ds.height // scale), max(1, ds.width // scale))
    data = ds.read(list(bands), out_shape=shape, masked=True, resampling=Resampling.nearest)
    out = []
    for b, band in zip(bands, data):
        values = band.compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputError(f"{ds.name}: band {b} holds no valid pixels")
        lo, hi = np.percentile(values, STRETCH_PERCENTILES)
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return tuple(out)


def read_window(plan: RasterPlan, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float32 in [0, 1] and an (H, W) bool mask of valid pixels for one window."""
    data, valid = read_bands(plan, window)
    return scale_to_unit(data, plan), valid


def read_bands(plan: RasterPlan, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) of the plan's bands as stored (uint8 stays uint8: scaled on the device) and the (H, W) valid-pixel mask."""
    from rasterio.windows import Window as RioWindow

    win = RioWindow(window.col, window.row, window.width, window.height)
    with _dataset(plan.path) as ds:
        data = ds.read(list(plan.bands), window=win)
        # GDAL's dataset-mask rule: a pixel is data if any of its bands is (a 0 in one band of a dark pixel is not nodata)
        valid = np.any(ds.read_masks(list(plan.bands), window=win) > 0, axis=0)
    return data, valid


READ_CACHE_BYTES = (64 << 20, 2 << 30)  # GDAL's block cache in a reading process: at least, at most (prepare_reads)
_cache_bytes = 0  # what prepare_reads set in this process (the largest any raster asked for)


def prepare_reads(plan: RasterPlan, tile_height: int) -> int:
    """Before a process reads tiles of `plan`: GDAL's block cache holds the blocks a row of tile windows touches (the
    largest any raster of this process needs); returns its size, 0 where the user set GDAL_CACHEMAX.

    Tiles come in rows (an actor's stretch of neighbours), and a row's windows
    overlap the next row's by twice the margin: with the row's blocks still
    cached they are not decoded again (the benchmark's 4096² DEFLATE raster:
    1.4 ms a tile with the row's 16 MB, 3.0 with 4 MB, 26.5 with 1 MB). GDAL's
    own default is 5% of the machine's memory for every process: 16 actors
    could hold 80% of it. (How many threads decode a window's blocks is the
    actor's: GDAL_NUM_THREADS, segbatch.engine.pipeline.)
    """
    global _cache_bytes
    from rasterio.env import set_gdal_config

    if "GDAL_CACHEMAX" in os.environ:
        return 0
    with _dataset(plan.path) as ds:
        wanted = read_cache_bytes(ds.block_shapes[0], ds.width, ds.count * np.dtype(ds.dtypes[0]).itemsize, tile_height)
    if wanted > _cache_bytes:
        set_gdal_config("GDAL_CACHEMAX", wanted)  # rasterio passes it to GDALSetCacheMax64: bytes, effective at once
        _cache_bytes = wanted
    return _cache_bytes


def read_cache_bytes(block: tuple[int, int], width: int, pixel_bytes: int, tile_height: int) -> int:
    """The block cache a row of tile windows needs: the rows of blocks a window starting mid-block touches, across the
    raster, each pixel with every band (interleaved files decode them together) and a mask byte; a quarter more, within
    READ_CACHE_BYTES."""
    block_height, block_width = block
    rows = (-(-tile_height // block_height) + 1) * block_height
    wanted = int(rows * -(-width // block_width) * block_width * (pixel_bytes + 1) * 1.25)
    return min(max(wanted, READ_CACHE_BYTES[0]), READ_CACHE_BYTES[1])


OPEN_RASTERS = 4  # rasters a process keeps open between reads (a job's tiles of one raster tend to come together)
_idle: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()  # a file's version -> its datasets open and not in use, latest last
_idle_lock = threading.Lock()


@contextmanager
def _dataset(path: str) -> Iterator[Any]:
    """The raster open for reading, for this thread alone while the block runs, kept open after it for the next read.

    Opening per window costs more than reading a window: the headers again,
    and GDAL's block cache goes with the dataset, so overlapping tiles would
    decode their shared blocks twice. rasterio datasets are not thread-safe,
    and each unit's reads run on a thread of their own: a dataset is taken
    from the idle ones (or opened) and handed back, never shared. A local
    file is known by its inode, size and mtime too: one replaced in place is
    opened again, never read through an old handle.
    """
    key = location.version(path)
    with _idle_lock:
        ready = _idle.get(key)
        ds = ready.pop() if ready else None
    if ds is None:
        ds = _open(path)
    try:
        yield ds
    except BaseException:
        ds.close()  # in an unknown state: not reused
        raise
    with _idle_lock:
        _idle.setdefault(key, []).append(ds)
        _idle.move_to_end(key)
        while len(_idle) > OPEN_RASTERS:
            for old in _idle.popitem(last=False)[1]:
                old.close()


def scale_to_unit(data: np.ndarray, plan: RasterPlan) -> np.ndarray:
    """uint8 / 255, else the plan's per-band percentile stretch, clipped to [0, 1]; NaN becomes 0 (it is masked)."""
    if plan.stretch is None:
        return data.astype(np.float32) / np.float32(255)
    lo = np.array([s[0] for s in plan.stretch], np.float32)[:, None, None]
    hi = np.array([s[1] for s in plan.stretch], np.float32)[:, None, None]
    out = (data.astype(np.float32) - lo) / (hi - lo)
    return cast(np.ndarray, np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0))


def plan_from_store(source: dict[str, Any], spatial_ref: Any) -> RasterPlan:
    """The plan a run used, rebuilt from its store (source attributes and the spatial_ref grid mapping): same bands and stretch."""
    return RasterPlan(
        path=source["path"],
        height=source["height"],
        width=source["width"],
        bands=tuple(source["bands"]),
        dtype=source["dtype"],
        crs_wkt=spatial_ref.get("crs_wkt"),
        transform=cast(tuple[float, float, float, float, float, float], tuple(float(v) for v in spatial_ref["GeoTransform"].split())),
        nodata=source["nodata"],
        stretch=tuple(tuple(s) for s in source["stretch"]) if source.get("stretch") else None,
    )


def fits_source(plan: RasterPlan) -> bool:
    """Whether the raster at the plan's path still has its size and bands (a store's source may change after the run)."""
    with _open(plan.path) as ds:
        return bool((ds.height, ds.width) == (plan.height, plan.width) and max(plan.bands) <= ds.count)


def georeference(plan: RasterPlan) -> dict[str, Any]:
    """CF grid-mapping coordinates for the store: x and y at pixel centres, spatial_ref (what rioxarray reads)."""
    x0, dx, _, y0, _, dy = plan.transform
    x = x0 + dx * (np.arange(plan.width) + 0.5)
    y = y0 + dy * (np.arange(plan.height) + 0.5)
    ref = {"GeoTransform": " ".join(repr(v) for v in plan.transform)}
    if plan.crs_wkt:
        ref |= {"crs_wkt": plan.crs_wkt, "spatial_ref": plan.crs_wkt}
    return {"x": x, "y": y, "spatial_ref": ref}


# GeoZarr's conventions, registered by UUID alone: the UUID is what identifies a convention for good, while
# its schema and spec URLs and its name changed between releases (geo-proj -> proj, zarr-experimental ->
# zarr-conventions) and each published schema pins them to constants; every one accepts an entry with its UUID.
GEOZARR_PROJ = {"uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f", "description": "Coordinate reference system information for geospatial data"}
GEOZARR_SPATIAL = {"uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4", "description": "Spatial coordinate information"}


def geozarr_attrs(plan: RasterPlan) -> dict[str, Any]:
    """GeoZarr `proj:` and `spatial:` attributes, at the top level of a node's attributes as the conventions define.

    The same keys go on the root group (where `proj:` applies to every array
    beside it) and on each (y, x) array, so a reader that opens one array
    alone finds them too. `proj:wkt2` is WKT2 (2019); `proj:code` is written
    when the CRS is equivalent to an EPSG one (PROJ's identification, 70%
    and up: same definition, maybe another name). `spatial:transform` is in
    rasterio's Affine order (a, b, c, d, e, f), not GDAL's.
    """
    x0, dx, rx, y0, ry, dy = plan.transform
    xs, ys = [x0, x0 + dx * plan.width], [y0, y0 + dy * plan.height]  # north-up: probe_raster refuses rotated grids
    out: dict[str, Any] = {"zarr_conventions": [GEOZARR_SPATIAL]}
    if plan.crs_wkt:
        from rasterio.crs import CRS
        from rasterio.enums import WktVersion

        crs = CRS.from_wkt(plan.crs_wkt)
        out["zarr_conventions"] = [GEOZARR_PROJ, GEOZARR_SPATIAL]
        code = crs.to_epsg()
        if code is not None:
            out["proj:code"] = f"EPSG:{code}"
        out["proj:wkt2"] = crs.to_wkt(version=WktVersion.WKT2_2019)
    return out | {
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [plan.height, plan.width],
        "spatial:transform": [dx, rx, x0, ry, dy, y0],
        "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
        "spatial:registration": "pixel",
    }
