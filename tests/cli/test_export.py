"""`segbatch export` read back with the tools users have: rasterio (and GDAL through it) for the COG, PyAV and Pillow for the overlay."""

import xml.etree.ElementTree as ET

import av
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import zarr
from PIL import Image
from rasterio.enums import Compression

from segbatch.colour import heatmap, legend_strip
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import run
from tests.helpers.videos import frame_index, write_video


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def _model(store):
    return zarr.open_group(str(store), mode="r").attrs["segbatch"]["model"]


@pytest.fixture(scope="module")
def raster_store(ray_address, runner_module, cli_module, tiny_model, tmp_path_factory):
    scene = write_geotiff(tmp_path_factory.mktemp("rasters") / "scene.tif", height=300, width=340)
    out = tmp_path_factory.mktemp("stores") / "scene.zarr"
    r = run(runner_module, cli_module, "--input", scene, "--out", out, "--model", tiny_model, "--samples", 2, "--tile", 256, "--overlap", 32)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def subclip_store(ray_address, runner_module, cli_module, tiny_model, tmp_path_factory):
    """Frames 100:112 of a 25 fps video: the subclip starts 4.00 s into its source."""
    video = write_video(tmp_path_factory.mktemp("videos") / "drive.mp4", 120, gop=12)
    out = tmp_path_factory.mktemp("stores") / "clip.zarr"
    r = run(runner_module, cli_module, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--frames", "100:112")
    assert r.exit_code == 0, r.output
    return out


def _what_gdal_reports(tif, tmp_path):
    """GDAL's own view of the band (category names, attribute table, description), .aux.xml included: its VRT copy of the file."""
    vrt = tmp_path / "probe.vrt"
    rasterio.shutil.copy(tif, vrt, driver="VRT")
    band = ET.parse(vrt).find("VRTRasterBand")
    vrt.unlink()
    rat = band.find("GDALRasterAttributeTable")
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")] if rat is not None else []
    return [c.text for c in band.iter("Category")], rows, band.findtext("Description")


# ---------------------------------------------------------------------------------------------------------- COG


def test_cog_names_its_band_and_classes_and_records_the_overview_resampling(runner, cli, raster_store, tmp_path):
    out = tmp_path / "cog"
    out.mkdir()
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(out / "labels.tif"), "--quiet"])
    assert r.exit_code == 0, r.output
    model = _model(raster_store)
    names, palette = model["classes"], model["palette"]
    with rasterio.open(out / "labels.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.descriptions == ("labels",)
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "NEAREST"
        assert ds.tags(1)["CLASS_3"] == names[3] and len([k for k in ds.tags(1) if k.startswith("CLASS_")]) == len(names)
        assert ds.colormap(1)[3][:3] == tuple(palette[3])
    # what GDAL (gdalinfo's "Categories:", QGIS's class labels) reads: the names, in class-id order, and a thematic table
    categories, rat, description = _what_gdal_reports(out / "labels.tif", tmp_path)
    assert categories == names and description == "labels"
    assert rat[3] == ["3", names[3], *map(str, palette[3])] and len(rat) == len(names)
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "labels.tif.aux.xml"]  # GDAL's sidecar, no temporaries
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(out / "labels.tif"), "--what", "entropy"])
    assert r.exit_code == 2 and "--overwrite" in _one_error_line(r.output)
    (out / "other.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar is the user's file too
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(out / "other.tif")])
    assert r.exit_code == 2 and "other.tif.aux.xml" in _one_error_line(r.output)
    (out / "other.tif.aux.xml").unlink()

    # a float array: its own name, overviews by average, no categories; the labels' sidecar does not outlive the file it described
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(out / "labels.tif"), "--what", "entropy", "--overwrite", "--quiet"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out / "labels.tif") as ds:
        assert ds.descriptions == ("entropy",) and ds.units == ("nats",) and ds.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE"
        assert not [k for k in ds.tags(1) if k.startswith("CLASS_")]
    assert _what_gdal_reports(out / "labels.tif", tmp_path)[:2] == ([], [])
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif"]


def test_an_existing_target_is_one_line_without_clicks_usage_lines(runner, cli, raster_store, tmp_path):
    (tmp_path / "labels.tif").write_bytes(b"the user's file")
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(tmp_path / "labels.tif")])
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"Error: {tmp_path / 'labels.tif'} exists; pass --overwrite to replace it"]  # no "Usage: ... Try --help"
    assert (tmp_path / "labels.tif").read_bytes() == b"the user's file"


def test_co_passes_gdal_creation_options_through(runner, cli, raster_store, tmp_path):
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(tmp_path / "z.tif"), "--co", "COMPRESS=ZSTD", "--co", "blocksize=128", "--quiet"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "z.tif") as ds:
        assert ds.compression == Compression.zstd and ds.profile["blockxsize"] == 128 and ds.overviews(1)
        np.testing.assert_array_equal(ds.read(1), zarr.open_group(str(raster_store), mode="r")["labels"][...])
    args = ["--co", "COMPRESS=LZW", "--co", "OVERVIEW_RESAMPLING=MODE", "--co", "BLOCKSIZE=128", "--quiet"]
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(tmp_path / "l.tif"), *args])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.compression == Compression.lzw and ds.tags()["OVERVIEW_RESAMPLING"] == "MODE"
    r = runner.invoke(
        cli, ["export", str(raster_store), "--to", str(tmp_path / "u.tif"), "--what", "uncertainty", "--co", "COMPRESS=LZW", "--co", "PREDICTOR=3"]
    )
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "u.tif") as ds:
        assert ds.compression == Compression.lzw and ds.descriptions == ("uncertainty",)


@pytest.mark.parametrize(
    ("co", "what", "says"),
    [
        ("COMPRESS", "labels", "not KEY=VALUE"),
        ("=ZSTD", "labels", "not KEY=VALUE"),
        ("COMPRESS=", "labels", "not KEY=VALUE"),
        ("FOO=1", "labels", "does not support creation option FOO"),
        ("COMPRESS=BOGUS", "labels", "BOGUS"),
        ("BLOCKSIZE=abc", "uncertainty", "BLOCKSIZE"),  # GDAL warns, then aborts the process: found before, in a child
        ("BLOCKSIZE=100", "labels", "BLOCKSIZE"),
        ("OVERVIEW_RESAMPLING=bogus", "uncertainty", "BOGUS"),
        ("COMPRESS=JPEG", "labels", "lossy"),
        ("OVERVIEW_RESAMPLING=average", "labels", "class ids"),
    ],
)
def test_a_bad_creation_option_is_one_line_and_exit_2(runner, cli, raster_store, tmp_path, co, what, says):
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(tmp_path / "x.tif"), "--what", what, "--co", co, "--quiet"])
    assert r.exit_code == 2, r.output
    assert says in _one_error_line(r.output)
    assert not list(tmp_path.iterdir())


def test_options_for_the_other_kind_of_export_are_refused(runner, cli, raster_store, subclip_store, tmp_path):
    r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / "o.mp4"), "--co", "COMPRESS=ZSTD"])
    assert r.exit_code == 2 and "--co" in _one_error_line(r.output)
    r = runner.invoke(cli, ["export", str(raster_store), "--to", str(tmp_path / "x.tif"), "--crf", "30"])
    assert r.exit_code == 2 and "--crf" in _one_error_line(r.output)
    r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / "pngs"), "--preset", "slow"])
    assert r.exit_code == 2 and "--preset" in _one_error_line(r.output)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- overlay video


def _decode(path):
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_a_subclip_overlay_keeps_its_source_timestamps(runner, cli, subclip_store, tmp_path):
    times = zarr.open_group(str(subclip_store), mode="r")["time"][...]
    assert times[0] == pytest.approx(4.0)
    for name in ("clip.mp4", "clip.mkv"):
        r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / name), "--quiet"])
        assert r.exit_code == 0, r.output
        frames = _decode(tmp_path / name)
        assert [t for t, _ in frames] == pytest.approx(list(times), abs=1e-3), name
        assert [frame_index(f[:48, :64]) for _, f in frames] == list(range(100, 112))  # each frame is the source frame at that time
        with av.open(str(tmp_path / name)) as c:
            assert "frames 100-111" in c.metadata.get("comment", c.metadata.get("COMMENT", ""))


def test_the_overlay_has_a_class_legend_and_a_colour_bar(runner, cli, subclip_store, tmp_path):
    model = _model(subclip_store)
    r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / "pngs"), "--quiet"])
    assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(tmp_path / "pngs" / "frame_000100.png").convert("RGB"))
    assert png.shape[1] == 128 and png.shape[0] > 48  # source | heat map, the legend strip below
    strip = png[48:].reshape(-1, 3)
    colours = {tuple(c) for c in strip.tolist()}
    assert all(tuple(c) in colours for c in model["palette"])  # every class's swatch, exactly its colour
    heat = [tuple(c) for c in heatmap(np.array([[0.0, 1.0]]), 1.0)[0].tolist()]
    assert all(c in colours for c in heat)  # the colour bar runs the heat map from its bottom to its top colour
    _, columns = np.nonzero((png[48:] == heat[1]).all(axis=-1))
    assert columns.min() >= 64  # the colour bar lies under the heat map panel

    # in the video, under lossy H.264: still every class colour, near enough
    r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / "o.mp4"), "--quiet"])
    assert r.exit_code == 0, r.output
    _, frame = _decode(tmp_path / "o.mp4")[0]
    assert frame.shape[:2] == png.shape[:2]
    video_strip = frame[48:].reshape(-1, 3).astype(int)
    for colour in model["palette"]:
        assert np.abs(video_strip - colour).max(axis=1).min() <= 40, colour


def test_the_legend_fits_small_and_large_frames():
    names = [f"class{i}" for i in range(11)] + ["a class with a very long name indeed"]
    palette = [(i * 20, 255 - i * 20, 100) for i in range(12)]
    for width in (64, 128, 1920):
        strip = legend_strip(width, names, palette, 0.042, "uncertainty", bar_left=width // 2, font_px=10 if width < 1000 else 28)
        assert strip.shape[1] == width and strip.shape[0] % 2 == 0 and strip.dtype == np.uint8
        assert {tuple(c) for c in palette} <= {tuple(c) for c in strip.reshape(-1, 3).tolist()}


def test_crf_and_preset_as_ffmpeg_takes_them(runner, cli, subclip_store, tmp_path):
    sizes = {}
    for crf in ("10", "40"):
        r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / f"crf{crf}.mp4"), "--crf", crf, "--preset", "slow", "--quiet"])
        assert r.exit_code == 0, r.output
        sizes[crf] = (tmp_path / f"crf{crf}.mp4").stat().st_size
    assert sizes["40"] < sizes["10"]
    for bad in (["--preset", "quick"], ["--crf", "52"], ["--crf", "-1"]):
        r = runner.invoke(cli, ["export", str(subclip_store), "--to", str(tmp_path / "bad.mp4"), *bad])
        assert r.exit_code == 2 and bad[0] in _one_error_line(r.output), r.output
    assert not (tmp_path / "bad.mp4").exists()


def test_the_cli_offers_the_presets_the_exporter_takes():
    from segbatch import export
    from segbatch.cli import export as cli_export

    assert cli_export.X264_PRESETS == export.X264_PRESETS  # kept twice so that `segbatch --help` imports no numpy
