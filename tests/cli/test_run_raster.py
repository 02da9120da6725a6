"""`segbatch run` on GeoTIFFs, `segbatch stitch`, and COG export, through the CLI on the session's Ray runtime."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from rasterio.transform import Affine

from segbatch.store import LEDGER
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, run

SAMPLES = Path(__file__).parents[3] / "shared" / "samples"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("rasters") / "scene.tif", height=600, width=700)


@pytest.fixture(scope="module")
def clean(ray_address, scene, tiny_model, tmp_path_factory):
    from click.testing import CliRunner

    from segbatch.cli.main import cli

    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    r = run(
        CliRunner(), cli, "--input", scene, "--out", out, "--model", tiny_model, "--samples", 2, "--tile", 256, "--overlap", 64, "--actors", 2, "--keep-tiles"
    )
    assert r.exit_code == 0, r.output
    return out


def test_georeferenced_labels_with_nodata(clean, scene):
    ds = xr.open_zarr(clean, decode_coords="all", mask_and_scale={"labels": False})
    with rasterio.open(scene) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform
    assert ds.labels.dims == ("y", "x") and ds.labels.shape == (600, 700)
    labels, unc = ds.labels.values, ds.uncertainty.values.astype(np.float32)
    assert (labels[:16, :16] == 255).all() and np.isnan(unc[:16, :16]).all()  # the source's nodata square
    assert (labels[16:, 16:] < 11).all() and np.isfinite(unc[16:, 16:]).all()
    attrs = ds.attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["source"]["kind"] == "raster" and attrs["geozarr"]["spatial:shape"] == [600, 700]


def test_stitch_again_from_kept_tiles(runner, cli, clean, ray_address):
    before = arrays(clean)
    root = zarr.open_group(str(clean), mode="r+")
    root["labels"][...] = 0  # spoil the output: the stitch must rebuild it from tiles/
    r = runner.invoke(cli, ["stitch", str(clean), "--quiet"])
    assert r.exit_code == 0, r.output
    for name, values in arrays(clean).items():
        np.testing.assert_array_equal(values, before[name], err_msg=name)


def test_all_nodata_tiles_are_skipped(ray_address, runner, cli, tiny_model, tmp_path):
    path = write_geotiff(tmp_path / "half.tif", height=300, width=600, hole=False)
    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, :, :300] = 0  # the west half is nodata
        ds.write(data)
    out = tmp_path / "half.zarr"
    r = run(runner, cli, "--input", path, "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 256, "--overlap", 64)
    assert r.exit_code == 0, r.output
    ledger = [json.loads(e) for e in zarr.open_group(str(out))[LEDGER][...]]
    assert sum(e["skipped"] for e in ledger) >= 2 and not all(e["skipped"] for e in ledger)
    labels = zarr.open_group(str(out))["labels"][...]
    assert (labels[:, :300] == 255).all() and (labels[:, 300:] != 255).all()
    # the skipped tiles are one compact entry of the store's problems, shown by info
    skipped = [e["unit"] for e in ledger if e["skipped"]]
    problems = zarr.open_group(str(out)).attrs["segbatch"]["problems"]
    assert len(problems) == 1 and problems[0]["kind"] == "skipped_tiles" and problems[0]["reason"] == "all nodata"
    assert problems[0]["count"] == len(skipped) and [t for a, b in problems[0]["tiles"] for t in range(a, b)] == sorted(skipped)
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["problems"] == problems
    text = runner.invoke(cli, ["info", str(out)]).output
    assert f"problems     {len(skipped)} tiles skipped (all nodata)" in text
    assert f"{len(skipped)} tiles skipped (all nodata): tiles {problems[0]['tiles'][0][0]}:" in text


def test_tiled_inference_matches_whole_image_inference(ray_address, runner, cli, tmp_path):
    """The quality bar: tile 256, overlap 64, --samples 0, the demo model on a street scene >= 99.5% equal to one pass."""
    import torch

    from segbatch.demo.model import demo_checkpoint_path
    from segbatch.demo.scenes import render_image
    from segbatch.mc import mc_predict
    from segbatch.model import load_checkpoint

    image, _ = render_image(424242, 544, 736)
    path = tmp_path / "street.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=544, width=736, count=3, dtype="uint8", crs="EPSG:3857", transform=Affine(0.5, 0, 0, 0, -0.5, 0)
    ) as ds:
        ds.write(np.moveaxis(image, -1, 0))
    out = tmp_path / "street.zarr"
    r = run(runner, cli, "--input", path, "--out", out, "--samples", 0, "--tile", 256, "--overlap", 64)
    assert r.exit_code == 0, r.output
    tiled = zarr.open_group(str(out))["labels"][...]
    model = load_checkpoint(demo_checkpoint_path()).model
    whole = mc_predict(model, torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, samples=0)["labels"][0].numpy()
    agree = (tiled == whole).mean()
    assert agree >= 0.995, agree
    # and the few disagreements do not line up on the tile seams
    core = 256 - 2 * 64
    near = np.zeros_like(tiled, bool)
    for k in range(core, 736, core):
        near[:, max(0, k - 4) : k + 4] = True
    for k in range(core, 544, core):
        near[max(0, k - 4) : k + 4, :] = True
    wrong = tiled != whole
    if wrong.any():
        assert wrong[near].mean() <= 3 * max(wrong[~near].mean(), 1e-4), (wrong[near].mean(), wrong[~near].mean())


def test_cog_export(runner, cli, clean, scene, tmp_path):
    r = runner.invoke(cli, ["export", str(clean), "--to", str(tmp_path / "labels.tif"), "--quiet"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "labels.tif") as ds, rasterio.open(scene) as src:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.profile["compress"] == "deflate" and ds.profile["tiled"]
        assert ds.overviews(1) and ds.crs == src.crs and ds.transform == src.transform and ds.nodata == 255
        palette = zarr.open_group(str(clean)).attrs["segbatch"]["model"]["palette"]
        assert ds.colormap(1)[3][:3] == tuple(palette[3])
        np.testing.assert_array_equal(ds.read(1), zarr.open_group(str(clean))["labels"][...])
    r = runner.invoke(cli, ["export", str(clean), "--to", str(tmp_path / "unc.tif"), "--what", "uncertainty", "--quiet"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "unc.tif") as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.read(1)[0, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.tif",
        "labels.tif.aux.xml",
        "unc.tif",
    ]  # no temporaries left (the class names sidecar GDAL reads)


def test_no_crs_is_allowed_with_a_warning(ray_address, runner, cli, tiny_model, tmp_path):
    path = write_geotiff(tmp_path / "nocrs.tif", crs=None, height=100, width=120)
    r = runner.invoke(cli, ["run", "--input", str(path), "--out", str(tmp_path / "n.zarr"), "--model", str(tiny_model), "--samples", "1"])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "no CRS" in r.output


@pytest.mark.skipif(not (SAMPLES / "bahamas_rgb.tif").exists(), reason="../shared/samples is not here (a fresh clone)")
def test_real_satellite_scene(ray_address, runner, cli, tiny_model, tmp_path):
    out = tmp_path / "bahamas.zarr"
    r = run(runner, cli, "--input", SAMPLES / "bahamas_rgb.tif", "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 256, "--overlap", 64)
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale={"labels": False})
    with rasterio.open(SAMPLES / "bahamas_rgb.tif") as src:
        assert ds.rio.crs == src.crs and ds.rio.transform() == src.transform
        valid = src.dataset_mask() > 0
    assert ((ds.labels.values == 255) == ~valid).all()
