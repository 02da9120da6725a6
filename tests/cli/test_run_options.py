"""Options that do not apply to the input's kind are refused in one place, before anything runs, for every kind."""

import pytest

from tests.helpers.folders import pixels, write_image
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import run
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "images").mkdir()
    write_image(d / "images" / "a.png", pixels(0, 32, 32))  # plain images: a folder of georeferenced rasters is a job of many rasters
    return {"video": write_video(d / "clip.mp4", 8), "raster": write_geotiff(d / "scene.tif"), "images": d / "images"}


@pytest.mark.parametrize(
    ("kind", "option", "words"),
    [
        ("video", ("--tile", "256"), "not for a video (--tile is for rasters)"),
        ("video", ("--overlap", "32"), "--overlap is for rasters"),
        ("video", ("--bands", "1,2,3"), "--bands is for rasters"),
        ("video", ("--keep-tiles",), "--keep-tiles is for rasters"),
        ("raster", ("--resize", "64x64"), "not for a raster (--resize is for videos and image folders)"),
        ("raster", ("--outputs", "probs"), "--outputs is for videos and image folders"),
        ("raster", ("--frames", "0:2"), "--frames is for videos"),
        ("raster", ("--hwaccel", "cuda"), "--hwaccel is for videos"),
        ("raster", ("--batch-size", "8"), "--batch-size is for videos"),
        ("images", ("--batch-size", "8"), "not for an image folder (--batch-size is for videos)"),
        ("images", ("--tile", "256"), "--tile is for rasters"),
    ],
)
def test_an_option_for_another_kind_is_one_line_exit_2(runner, cli, inputs, tiny_model, tmp_path, kind, option, words):
    r = run(runner, cli, "--input", inputs[kind], "--out", tmp_path / "x.zarr", "--model", tiny_model, *option)
    assert r.exit_code == 2, r.output
    assert words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x.zarr").exists()


def test_every_wrong_option_is_named_at_once(runner, cli, inputs, tiny_model, tmp_path):
    r = run(runner, cli, "--input", inputs["video"], "--out", tmp_path / "x.zarr", "--model", tiny_model, "--tile", "256", "--bands", "1")
    assert r.exit_code == 2 and r.output.strip().splitlines()[0].startswith("Error: --tile, --bands: not for a video")


def test_a_config_file_value_counts_as_given(runner, cli, inputs, tiny_model, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  tile: 256\n")
    r = run(runner, cli, "--config", config, "--input", inputs["video"], "--out", tmp_path / "x.zarr", "--model", tiny_model)
    assert r.exit_code == 2 and "--tile is for rasters" in r.output
