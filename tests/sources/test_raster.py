from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import Affine

from segbatch.errors import InputError
from segbatch.sources.raster import READ_CACHE_BYTES, georeference, prepare_reads, probe_raster, read_bands, read_cache_bytes, read_window
from segbatch.tiling import Window
from tests.helpers.rasters import write_geotiff

SAMPLES = Path(__file__).parents[3] / "shared" / "samples"


def test_plan_carries_crs_transform_nodata(tmp_path):
    plan = probe_raster(write_geotiff(tmp_path / "a.tif"), None, 3)
    assert (plan.height, plan.width, plan.bands, plan.dtype, plan.nodata) == (96, 128, (1, 2, 3), "uint8", 0)
    assert "32618" in plan.crs_wkt or "UTM zone 18N" in plan.crs_wkt
    assert plan.transform == (500000.0, 30.0, 0.0, 2700000.0, 0.0, -30.0)
    assert plan.stretch is None


def test_windows_are_scaled_and_masked(tmp_path):
    plan = probe_raster(write_geotiff(tmp_path / "a.tif"), None, 3)
    data, valid = read_window(plan, Window(8, 8, 40, 50))
    assert data.shape == (3, 40, 50) and data.dtype == np.float32 and valid.shape == (40, 50)
    assert 0 <= data.min() and data.max() <= 1
    assert not valid[:8, :8].any() and valid[8:, 8:].all()  # the nodata square ends at row/col 16


def test_band_count_must_match_unless_bands_are_chosen(tmp_path):
    path = write_geotiff(tmp_path / "landsat.tif", bands=6, dtype="uint16")
    with pytest.raises(InputError, match="6 bands but the model takes 3.*--bands"):
        probe_raster(path, None, 3)
    plan = probe_raster(path, (3, 2, 1), 3)
    assert plan.bands == (3, 2, 1) and plan.stretch is not None and len(plan.stretch) == 3
    assert all(lo < hi for lo, hi in plan.stretch)
    data, _ = read_window(plan, Window(0, 0, 96, 128))
    assert 0 <= data.min() and data.max() <= 1 and data.std() > 0.1  # stretched, not crushed into a corner of [0, 1]
    with pytest.raises(InputError, match="band 7 is out of range"):
        probe_raster(path, (7, 2, 1), 3)
    with pytest.raises(InputError, match="picks 2 bands"):
        probe_raster(path, (2, 1), 3)


def test_rotated_geotransform_is_refused(tmp_path):
    path = write_geotiff(tmp_path / "rot.tif", transform=Affine(30.0, 5.0, 500000.0, 5.0, -30.0, 2700000.0))
    with pytest.raises(InputError, match="rotated or sheared"):
        probe_raster(path, None, 3)


def test_not_a_raster_and_missing(tmp_path):
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(InputError, match="not a readable raster"):
        probe_raster(tmp_path / "notes.tif", None, 3)
    with pytest.raises(InputError, match="no such file"):
        probe_raster(tmp_path / "missing.tif", None, 3)


def test_georeference_gives_pixel_centres(tmp_path):
    plan = probe_raster(write_geotiff(tmp_path / "a.tif"), None, 3)
    geo = georeference(plan)
    assert geo["x"][0] == 500015.0 and geo["y"][0] == 2699985.0 and len(geo["x"]) == 128
    assert geo["spatial_ref"]["crs_wkt"] == plan.crs_wkt and geo["spatial_ref"]["GeoTransform"].split()[1] == "30.0"


@pytest.mark.skipif(not (SAMPLES / "bahamas_rgb.tif").exists(), reason="../shared/samples is not here (a fresh clone)")
def test_real_satellite_scene():
    plan = probe_raster(SAMPLES / "bahamas_rgb.tif", None, 3)
    assert (plan.height, plan.width, plan.nodata) == (718, 791, 0)
    data, valid = read_window(plan, Window(0, 0, 256, 256))
    assert data.shape == (3, 256, 256) and valid.dtype == bool


def test_a_raster_replaced_in_place_is_read_anew_not_through_the_open_dataset_kept_for_it(tmp_path):
    """Datasets stay open between windows (one open per window costs more than the window); a file rewritten since is reopened."""
    path = write_geotiff(tmp_path / "scene.tif", seed=0)
    plan = probe_raster(path, None, 3)
    window = Window(40, 40, 32, 32)
    first, _ = read_bands(plan, window)
    assert np.array_equal(read_bands(plan, window)[0], first)  # read again through the kept dataset
    write_geotiff(tmp_path / "other.tif", seed=1).replace(path)  # another file at the same path
    second, _ = read_bands(plan, window)
    assert not np.array_equal(second, first)
    assert np.array_equal(np.rint(read_window(plan, window)[0] * 255), second)  # read_window: the same bands, scaled


def test_the_block_cache_holds_a_row_of_tile_windows():
    # 512-px blocks: a 512-px window starting mid-block touches 2 rows of them; 3 bands of uint8 and a mask byte
    assert read_cache_bytes((512, 512), 40_000, 3, 512) == int(1024 * 40_448 * 4 * 1.25)
    assert read_cache_bytes((1, 40_000), 40_000, 3, 512) == int(513 * 40_000 * 4 * 1.25)  # a striped file: a row per block
    assert read_cache_bytes((256, 256), 4096, 3, 512) == READ_CACHE_BYTES[0]  # small rasters keep a useful cache anyway
    assert read_cache_bytes((512, 512), 400_000, 8, 512) == READ_CACHE_BYTES[1]  # and the widest do not take the machine


def test_reads_are_prepared_unless_the_user_set_gdal(tmp_path, monkeypatch):
    from rasterio.env import get_gdal_config

    import segbatch.sources.raster as raster

    plan = probe_raster(write_geotiff(tmp_path / "a.tif"), None, 3)
    monkeypatch.setattr(raster, "_cache_bytes", 0)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert prepare_reads(plan, 512) == READ_CACHE_BYTES[0]
    assert int(get_gdal_config("GDAL_CACHEMAX")) == READ_CACHE_BYTES[0]
    monkeypatch.setattr(raster, "_cache_bytes", 0)
    monkeypatch.setenv("GDAL_CACHEMAX", "10")
    assert prepare_reads(plan, 512) == 0  # the user's setting stands
    data, _ = read_bands(plan, Window(0, 0, 40, 50))
    assert data.shape == (3, 40, 50)
