"""Stores as the tools users already have read them: plain zarr (GeoZarr keys), rasterio, xarray and rioxarray (CF).

Each store is made through the CLI; every check reads it with the reading tool alone, never through segbatch.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.transform import Affine

from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import invoke, run
from tests.helpers.videos import write_video

# class names as a user's model may have them: spaces inside, a character CF's flag_meanings do not allow
CLASSES = ("sky", "building", "traffic sign", "road", "side walk", "tree", "pole", "fence", "car", "pedestrian", "bike/cyclist")
FLOATS = ("uncertainty", "entropy", "confidence")
PROJ_UUID, SPATIAL_UUID = "f17cb550-5864-4468-aeb7-f3180cfb622f", "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"


@pytest.fixture(scope="module")
def named_model(tmp_path_factory):
    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    model = tiny_segnet_basic(11)
    path = tmp_path_factory.mktemp("models") / "named.pt"
    save_checkpoint(model, path, ModelSpec.of(model, class_names=CLASSES))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("rasters") / "scene.tif", height=160, width=200)  # EPSG:32618, a nodata square


@pytest.fixture(scope="module")
def raster_store(ray_address, runner_module, cli_module, scene, named_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("raster") / "scene.zarr"
    args = ("--input", scene, "--out", out, "--model", named_model, "--samples", 1, "--tile", 128, "--overlap", 32, "--float32")
    r = run(runner_module, cli_module, *args)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def video_store(ray_address, runner_module, cli_module, named_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    video = write_video(folder / "drive.mp4", 40, gop=12)  # 25 frames a second
    out = folder / "drive.zarr"
    r = run(runner_module, cli_module, "--input", video, "--out", out, "--model", named_model, "--samples", 2, "--outputs", "mutual_information")
    assert r.exit_code == 0, r.output
    return out


# GeoZarr: read by plain zarr in a fresh interpreter that never imports segbatch
_READ_GEOZARR = """
import json, sys
import zarr
keys = ("zarr_conventions", "proj:code", "proj:wkt2", "spatial:dimensions", "spatial:shape", "spatial:transform", "spatial:bbox")
root = zarr.open_group(sys.argv[1], mode="r")
out = {"root": {k: root.attrs.get(k) for k in keys}, "Conventions": root.attrs.get("Conventions")}
for name in sys.argv[2:]:
    out[name] = {k: root[name].attrs.get(k) for k in keys} | {"dims": list(root[name].metadata.dimension_names)}
out["spatial_ref"] = dict(root["spatial_ref"].attrs)
assert not [m for m in sys.modules if m.split(".")[0] == "segbatch"]
print(json.dumps(out))
"""


def test_geozarr_keys_are_at_the_top_level_of_the_root_and_of_each_array(raster_store, scene):
    names = ("labels", *FLOATS)
    done = subprocess.run([sys.executable, "-c", _READ_GEOZARR, str(raster_store), *names], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    with rasterio.open(scene) as src:
        crs, transform, shape = src.crs, src.transform, [src.height, src.width]
    for where in ("root", *names):
        attrs = got[where]
        assert attrs["proj:wkt2"].startswith("PROJCRS[")  # WKT2 (2019), not WKT1's PROJCS[
        assert CRS.from_wkt(attrs["proj:wkt2"]) == crs, where
        assert attrs["proj:code"] == "EPSG:32618" and CRS.from_user_input(attrs["proj:code"]) == crs, where
        assert Affine(*attrs["spatial:transform"]) == transform, where  # rasterio's (a, b, c, d, e, f) order
        assert attrs["spatial:shape"] == shape and attrs["spatial:dimensions"] == ["y", "x"], where
        assert attrs["spatial:bbox"] == pytest.approx(list(rasterio.transform.array_bounds(*shape, transform)))
        assert {c["uuid"] for c in attrs["zarr_conventions"]} == {PROJ_UUID, SPATIAL_UUID}, where
        if where != "root":
            assert attrs["dims"] == attrs["spatial:dimensions"], where
    assert got["Conventions"] == "CF-1.10"
    # the CF grid mapping rioxarray reads is still there, and says the same
    assert CRS.from_wkt(got["spatial_ref"]["crs_wkt"]) == crs
    assert Affine.from_gdal(*map(float, got["spatial_ref"]["GeoTransform"].split())) == transform
    ds = xr.open_zarr(raster_store, decode_coords="all")
    assert ds.rio.crs == crs and ds.rio.transform() == transform


def test_rioxarray_sees_nodata_and_to_raster_writes_it(raster_store, scene, tmp_path):
    root = zarr.open_group(str(raster_store), mode="r")
    labels = root["labels"][...]
    assert (labels[:16, :16] == 255).all() and (labels[16:, 16:] < 11).all()  # the source's nodata square
    with rasterio.open(scene) as src:
        crs, transform = src.crs, src.transform

    # decoded as CF says: labels masked (NaN where 255), the encoded nodata 255; to_raster writes uint8 with nodata 255
    ds = xr.open_zarr(raster_store, decode_coords="all")
    assert ds.labels.rio.encoded_nodata == 255 and math.isnan(ds.labels.rio.nodata)
    assert np.isnan(ds.labels.values[:16, :16]).all()
    ds.labels.rio.to_raster(tmp_path / "labels.tif")
    with rasterio.open(tmp_path / "labels.tif") as tif:
        assert tif.nodata == 255 and tif.dtypes == ("uint8",) and tif.crs == crs and tif.transform == transform
        np.testing.assert_array_equal(tif.read(1), labels)

    # labels kept as uint8 (the README's recipe): rio.nodata is 255 itself
    raw = xr.open_zarr(raster_store, decode_coords="all", mask_and_scale={"labels": False})
    assert raw.labels.dtype == np.uint8 and raw.labels.rio.nodata == 255
    raw.labels.rio.to_raster(tmp_path / "raw.tif")
    with rasterio.open(tmp_path / "raw.tif") as tif:
        assert tif.nodata == 255
        np.testing.assert_array_equal(tif.read(1), labels)

    for name in FLOATS:
        arr = ds[name]
        assert math.isnan(arr.rio.encoded_nodata) and math.isnan(arr.rio.nodata), name
        arr.rio.to_raster(tmp_path / f"{name}.tif")
        with rasterio.open(tmp_path / f"{name}.tif") as tif:
            assert tif.dtypes == ("float32",) and math.isnan(tif.nodata), name
            masked = tif.read(1, masked=True)
            assert masked.mask[:16, :16].all() and not masked.mask[16:, 16:].any(), name
            np.testing.assert_array_equal(tif.read(1), root[name][...])


def test_cf_attributes_flags_units_and_conventions(raster_store, video_store):
    meanings = "sky building traffic_sign road side_walk tree pole fence car pedestrian bike_cyclist"
    for store in (raster_store, video_store):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing in the metadata puzzles xarray
            ds = xr.open_zarr(store)
        assert ds.attrs["Conventions"] == "CF-1.10"
        labels = ds.labels
        assert labels.attrs["flag_values"] == list(range(11)) and labels.attrs["flag_meanings"] == meanings
        assert len(labels.attrs["flag_meanings"].split()) == len(labels.attrs["flag_values"])
        assert labels.encoding["_FillValue"] == 255 and 255 not in labels.attrs["flag_values"]
        for name in (n for n in ("uncertainty", "entropy", "confidence", "mutual_information") if n in ds):
            assert ds[name].attrs["units"] == "1", name
        for name in ("entropy", "mutual_information"):
            if name in ds:
                assert "nats" in ds[name].attrs["long_name"] and "nats" in ds[name].attrs["comment"], name
    ds = xr.open_zarr(video_store)
    assert "mutual_information" in ds and ds.time.attrs["units"] == "s"


def test_video_floats_keep_their_dtype_and_nodata_and_time_selects_frames(video_store, tmp_path):
    ds = xr.open_zarr(video_store)
    assert ds.labels.dims == ("frame", "y", "x") and ds.entropy.dtype == np.float16  # dims and dtypes as before
    for name in ("uncertainty", "entropy", "confidence", "mutual_information"):
        assert math.isnan(ds[name].rio.encoded_nodata), name
    assert ds.labels.rio.encoded_nodata == 255
    # float16 has no GeoTIFF type: to_raster(dtype="float32") writes it, NaN still the nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ds.entropy.isel(frame=0).rio.to_raster(tmp_path / "entropy.tif", dtype="float32")
    with rasterio.open(tmp_path / "entropy.tif") as tif:
        assert tif.dtypes == ("float32",) and math.isnan(tif.nodata)

    # `time` is a coordinate along `frame`; one call makes it an index, then select by time (README)
    assert "time" in ds.coords and "time" not in ds.data_vars
    by_time = ds.set_xindex("time")
    near = by_time.sel(time=0.97, method="nearest")  # frame 24 is at 0.96 s
    assert float(near.time) == pytest.approx(0.96)
    np.testing.assert_array_equal(near.labels.values, ds.labels.isel(frame=24).values)
    assert by_time.sel(time=slice(0.19, 0.41)).sizes["frame"] == 6  # 0.20 .. 0.40 s: frames 5..10


def test_the_ledger_is_not_a_data_variable_and_old_stores_still_read(video_store, runner, cli, tmp_path):
    from segbatch.store import LEDGER

    ds = xr.open_zarr(video_store)
    assert "ledger" not in ds.variables and "unit" not in ds.dims
    assert set(ds.data_vars) == {"labels", "uncertainty", "entropy", "confidence", "mutual_information"}
    root = zarr.open_group(str(video_store), mode="r")
    entries = [json.loads(e) for e in root[LEDGER][...]]
    assert entries and all(e["run"] for e in entries)

    # a store made before the ledger moved (before 0.2, so before coordinate digests) has it at the root: info, verify and export read it there
    old = tmp_path / "old.zarr"
    shutil.copytree(video_store, old)
    legacy = zarr.open_group(str(old), mode="r+", use_consolidated=False)
    legacy.attrs["segbatch"] = {**legacy.attrs["segbatch"], "version": "0.1.0"}
    values = legacy[LEDGER][...]
    legacy.create_array("ledger", shape=values.shape, chunks=(1,), dtype=str, fill_value="", dimension_names=["unit"])[...] = values
    del legacy[LEDGER.split("/")[0]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(legacy.store)
    assert LEDGER not in zarr.open_group(str(old), mode="r")
    info = json.loads(invoke(runner, cli, "info", old, "--json").output)
    assert info["units"] == {"finished": len(entries), "total": len(entries)} and "ledger" not in info["arrays"]
    assert invoke(runner, cli, "verify", old).exit_code == 0
    assert invoke(runner, cli, "export", old, "--to", tmp_path / "frames", "--quiet").exit_code == 0
