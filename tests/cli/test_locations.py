"""Inputs and stores by fsspec URL (file:// here; s3://, gs:// take the same code path) and the URL mappings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import zarr

from segbatch import location
from segbatch.errors import InputError
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke


def test_urls_stay_urls_and_map_to_gdal_virtual_file_systems():
    assert location.parse("s3://bucket/a/b.zarr") == "s3://bucket/a/b.zarr"  # a Path would fold the '//'
    assert location.parse("runs/a.zarr") == Path("runs/a.zarr")
    assert location.gdal_path("s3://bucket/scenes/a.tif") == "/vsis3/bucket/scenes/a.tif"
    assert location.gdal_path("gs://bucket/a.tif") == "/vsigs/bucket/a.tif"
    assert location.gdal_path("az://container/a.tif") == "/vsiaz/container/a.tif"
    assert location.gdal_path("https://host/data/a.tif") == "/vsicurl/https://host/data/a.tif"
    assert location.gdal_path("file:///data/a.tif") == "/data/a.tif"
    assert location.gdal_path(Path("local.tif")) == "local.tif"
    with pytest.raises(InputError, match="GDAL reads"):
        location.gdal_path("ftp://host/a.tif")
    assert location.suffix("s3://bucket/drive.MP4") == ".mp4"


def test_video_and_store_by_url_equal_the_localinvoke(runner, cli, ray_address, tiny_model, tmp_path):
    from segbatch.demo.video import write_demo_video

    video = write_demo_video(tmp_path / "drive.mp4", 16, 48, 64)
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    common = ("--model", f"file://{tiny_model}", "--samples", "2", "--address", ray_address, "--quiet")
    assert invoke(runner, cli, "run", "--input", video, "--out", local, *common).exit_code == 0
    result = invoke(runner, cli, "run", "--input", f"file://{video}", "--out", f"file://{remote}", *common)
    assert result.exit_code == 0, result.output
    assert_same(arrays(local), arrays(remote))
    attrs = zarr.open_group(str(remote), mode="r").attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["source"]["path"] == f"file://{video}"
    info = invoke(runner, cli, "info", f"file://{remote}")
    assert info.exit_code == 0 and "complete" in info.output
    audit = invoke(runner, cli, "audit", f"file://{remote}", "--report", tmp_path / "report", "--top", "2", "--min-gap", "0", "--quiet")  # 16 frames: < 1 s
    assert audit.exit_code == 0, audit.output
    assert len(list((tmp_path / "report" / "thumbs").glob("*-input.png"))) == 2  # the source read back through its URL


def test_raster_by_url_is_read_through_gdal_and_stitched_in_the_url_store(runner, cli, ray_address, tiny_model, tmp_path):
    raster = write_geotiff(tmp_path / "scene.tif", height=96, width=112)
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    common = ("--model", tiny_model, "--samples", "2", "--tile", "64", "--overlap", "8", "--address", ray_address, "--quiet")
    assert invoke(runner, cli, "run", "--input", raster, "--out", local, *common).exit_code == 0
    result = invoke(runner, cli, "run", "--input", f"file://{raster}", "--out", f"file://{remote}", *common)
    assert result.exit_code == 0, result.output
    assert_same(arrays(local), arrays(remote))
    assert not (remote / "tiles").exists()  # removed through the store's filesystem after the stitch


def test_a_store_whose_creation_never_finished_is_not_resumed(runner, cli, ray_address, tiny_model, tmp_path):
    from segbatch.demo.video import write_demo_video
    from segbatch.store import open_store, update_attrs

    video = write_demo_video(tmp_path / "drive.mp4", 8, 48, 64)
    store = tmp_path / "half.zarr"
    args = ("run", "--input", video, "--out", f"file://{store}", "--model", tiny_model, "--samples", "1", "--address", ray_address, "--quiet")
    assert invoke(runner, cli, *args).exit_code == 0
    update_attrs(open_store(store, mode="r+"), status="creating")  # as a driver killed while making an object-store store leaves it
    result = invoke(runner, cli, *args, "--resume")
    assert result.exit_code == 2 and "never fully created" in result.output


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="with gcsfs installed this would reach for the network")
def test_a_url_without_its_fsspec_backend_is_one_line_exit_2(runner, cli):
    result = invoke(runner, cli, "info", "gs://some-bucket/run.zarr")  # obstore (s3://) is a test dependency: gs:// has no backend here
    assert result.exit_code == 2 and "gcsfs" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_node_that_cannot_see_the_input_says_which_node(tmp_path):
    from segbatch.engine.pipeline import require_readable

    require_readable(tmp_path)  # seen: no error
    with pytest.raises(InputError, match=r"node .+ cannot read the input .*missing\.mp4 \(is it on a path or URL every node sees\?\)"):
        require_readable(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="cannot read the input file:///"):
        require_readable(f"file://{tmp_path}/missing.tif")
