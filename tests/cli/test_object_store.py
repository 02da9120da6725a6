"""Object storage through the real CLI, against a real S3-protocol server (moto's, on 127.0.0.1; see tests/helpers/s3.py).

Stores are written to s3://, inputs read from s3:// (videos through an fsspec
file object, rasters through GDAL's /vsis3/, STAC hrefs), and every store is
the one a local run gives, bit for bit: after a killed driver's --resume, and
after a chunk deleted from the bucket was found by verify and redone by
--resume. info, verify, export and audit read the store from the bucket.
"""

from __future__ import annotations

import json

import pytest
import zarr

from tests.helpers.drivers import kill_driver_mid_run, start_driver, total_units
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke, run
from tests.helpers.videos import write_video

RASTER = ("--tile", 64, "--overlap", 16)


def settings(model, *extra):
    return ("--model", model, "--samples", 2, "--actors", 1, *extra)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A short video (several units), a long one (for a kill mid-run) and a GeoTIFF, local."""
    folder = tmp_path_factory.mktemp("inputs")
    return {
        "video": write_video(folder / "clip.mp4", 16, gop=8),
        "long": write_video(folder / "long.mp4", 160, gop=16),
        "scene": write_geotiff(folder / "scene.tif"),
    }


@pytest.fixture(scope="module")
def local(ray_address, runner_module, cli_module, inputs, tiny_model, tmp_path_factory):
    """Each input run locally, local store: the arrays every object-store run must equal."""
    folder = tmp_path_factory.mktemp("local")
    out = {}
    for name, extra in (("video", ()), ("long", ()), ("scene", RASTER)):
        store = folder / f"{name}.zarr"
        r = run(runner_module, cli_module, "--input", inputs[name], "--out", store, *settings(tiny_model, *extra))
        assert r.exit_code == 0, r.output
        out[name] = arrays(store)
    return out


def upload(s3_server, bucket: str, path, key: str) -> str:
    url = f"{bucket}/{key}"
    s3_server.put(url, path.read_bytes())
    return url


def test_a_video_store_written_to_s3_is_the_local_one_and_every_command_reads_it(
    ray_address, runner, cli, s3_server, s3_bucket, inputs, local, tiny_model, tmp_path
):
    out = f"{s3_bucket}/runs/clip.zarr"
    r = run(runner, cli, "--input", inputs["video"], "--out", out, *settings(tiny_model))
    assert r.exit_code == 0, r.output
    assert "runs/clip.zarr/zarr.json" in s3_server.keys(out)
    assert_same(arrays(out), local["video"])

    assert invoke(runner, cli, "verify", out).exit_code == 0
    info = json.loads(invoke(runner, cli, "info", out, "--json").stdout)
    assert info["status"] == "complete"
    r = invoke(runner, cli, "export", out, "--to", tmp_path / "overlay.mp4", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    r = invoke(runner, cli, "audit", out, "--report", tmp_path / "report", "--top", 2, "--min-gap", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report" / "index.html").exists() and (tmp_path / "report" / "items.csv").exists()


def test_a_video_read_from_s3_gives_the_local_arrays(ray_address, runner, cli, s3_server, s3_bucket, inputs, local, tiny_model, tmp_path):
    source = upload(s3_server, s3_bucket, inputs["video"], "videos/clip.mp4")
    out = tmp_path / "from-s3.zarr"
    r = run(runner, cli, "--input", source, "--out", out, *settings(tiny_model))
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(out), mode="r").attrs["segbatch"]["source"]["kind"] == "video"
    assert_same(arrays(out), local["video"])


def test_a_raster_read_through_vsis3_and_written_to_s3_gives_the_local_arrays(
    ray_address, runner, cli, s3_server, s3_bucket, inputs, local, tiny_model, tmp_path
):
    source = upload(s3_server, s3_bucket, inputs["scene"], "scenes/scene.tif")
    out = f"{s3_bucket}/scene.zarr"
    r = run(runner, cli, "--input", source, "--out", out, *settings(tiny_model, *RASTER))
    assert r.exit_code == 0, r.output
    assert_same(arrays(out), local["scene"])
    assert invoke(runner, cli, "verify", out).exit_code == 0
    r = invoke(runner, cli, "export", out, "--to", tmp_path / "labels.tif", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "labels.tif").stat().st_size > 0


def test_verify_finds_a_chunk_deleted_from_the_bucket_and_resume_repairs_it(ray_address, runner, cli, s3_server, s3_bucket, inputs, local, tiny_model):
    out = f"{s3_bucket}/clip.zarr"
    args = ("--input", inputs["video"], "--out", out, *settings(tiny_model))
    assert run(runner, cli, *args).exit_code == 0
    chunks = [k for k in s3_server.keys(f"{out}/labels") if k.rsplit("/", 1)[1].startswith("c.")]  # labels/c.U.0.0: unit U's
    assert len(chunks) == total_units(out) > 1
    s3_server.delete(f"{s3_bucket}/{chunks[-1]}")

    r = invoke(runner, cli, "verify", out)
    assert r.exit_code == 1, r.output
    assert f"chunk labels/{chunks[-1].rsplit('/c.', 1)[1]} missing" in r.output
    r = run(runner, cli, *args, "--resume")
    assert r.exit_code == 0, r.output
    assert f"{len(chunks) - 1} units already done" in r.output  # only the damaged unit was redone
    assert invoke(runner, cli, "verify", out).exit_code == 0
    assert_same(arrays(out), local["video"])


def test_a_driver_killed_mid_run_is_finished_by_resume_bit_for_bit(ray_address, runner, cli, s3_bucket, inputs, local, tiny_model):
    out = f"{s3_bucket}/long.zarr"
    args = ("--input", inputs["long"], "--out", out, *settings(tiny_model))
    proc = start_driver(ray_address, *args)  # its own process, with this session's S3 variables
    done = kill_driver_mid_run(out, proc)
    assert 1 <= done < total_units(out)

    r = run(runner, cli, *args, "--resume")
    assert r.exit_code == 0, r.output
    assert "units already done" in r.output
    assert_same(arrays(out), local["long"])
    assert invoke(runner, cli, "verify", out).exit_code == 0


def test_a_stac_item_collection_of_s3_hrefs_is_one_job(ray_address, runner, cli, s3_server, s3_bucket, tiny_model, tmp_path):
    import pystac

    items = []
    for i, (h, w) in enumerate([(70, 90), (64, 50)]):
        scene = write_geotiff(tmp_path / f"s{i}.tif", height=h, width=w, seed=i)
        href = upload(s3_server, s3_bucket, scene, f"scenes/s{i}.tif")
        item = pystac.Item(f"scene-{i}", None, None, pystac.utils.str_to_datetime("2026-01-01T00:00:00Z"), {})
        item.add_asset("image", pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))

    out = f"{s3_bucket}/scenes.zarr"
    r = run(runner, cli, "--input", collection, "--asset", "image", "--out", out, *settings(tiny_model, *RASTER))
    assert r.exit_code == 0, r.output
    attrs = zarr.open_group(out, mode="r").attrs["segbatch"]
    assert attrs["kind"] == "job" and [i["name"] for i in attrs["inputs"]] == ["scene-0", "scene-1"]
    assert [i["path"] for i in attrs["inputs"]] == [f"{s3_bucket}/scenes/s0.tif", f"{s3_bucket}/scenes/s1.tif"]
    for i in range(2):
        single = tmp_path / f"s{i}.zarr"
        assert run(runner, cli, "--input", tmp_path / f"s{i}.tif", "--out", single, *settings(tiny_model, *RASTER)).exit_code == 0
        assert_same(arrays(f"{out}/scene-{i}"), arrays(single))
    assert invoke(runner, cli, "verify", out).exit_code == 0
