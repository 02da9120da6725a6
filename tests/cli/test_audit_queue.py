"""`segbatch audit --queue`: the items to relabel first, written as FiftyOne's image segmentation directory and CVAT's
Segmentation mask 1.1 read them, with masks equal to the store's labels and pixels cut out of the source."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr
from PIL import Image

from tests.helpers.queue import check_layout
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import invoke, new_video_store, run
from tests.helpers.videos import frame_index, write_video


def test_a_video_queue_holds_the_most_uncertain_frames_cut_from_the_source(ray_address, runner, cli, tiny_model, tmp_path):
    video = write_video(tmp_path / "clip.mp4", 40, gop=8)
    store, queue = tmp_path / "clip.zarr", tmp_path / "queue"
    assert run(runner, cli, "--input", video, "--out", store, "--model", tiny_model, "--samples", 2, "--address", ray_address).exit_code == 0
    r = invoke(runner, cli, "audit", store, "--report", tmp_path / "report", "--queue", queue, "--queue-size", 6, "--quiet")
    assert r.exit_code == 0, r.output
    assert "queued 6 frames to relabel, by uncertainty" in r.output
    root = zarr.open_group(str(store), mode="r")
    attrs = root.attrs["segbatch"]
    rows = check_layout(queue, attrs["model"]["classes"], attrs["model"]["palette"])
    assert len(rows) == 6 and all(r["why"].startswith("most uncertain") for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    means = root["uncertainty"][...].astype(np.float64).mean(axis=(1, 2))
    for r in rows:
        frame = int(r["at"])
        assert frame_index(np.asarray(Image.open(queue / "data" / f"{r['name']}.png"))) == frame  # the source's own frame
        assert np.array_equal(np.asarray(Image.open(queue / "labels" / f"{r['name']}.png")), root["labels"][frame])
        assert float(r["score"]) == pytest.approx(means[frame], rel=1e-4)

    refused = invoke(runner, cli, "audit", store, "--report", tmp_path / "r2", "--queue", tmp_path / "q2", "--queue-by", "label-errors")
    assert refused.exit_code == 2 and "needs --truth" in refused.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = invoke(runner, cli, "audit", store, "--report", tmp_path / "r3", "--queue", tmp_path / "mine", "--overwrite")
    assert refused.exit_code == 2 and "not a segbatch relabelling queue" in refused.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_raster_queue_keeps_each_tiles_georeferencing(ray_address, runner, cli, tiny_model, tmp_path):
    import rasterio
    from rasterio.windows import Window

    scene = write_geotiff(tmp_path / "scene.tif", height=150, width=200)
    store, queue = tmp_path / "scene.zarr", tmp_path / "queue"
    args = ("--input", scene, "--out", store, "--model", tiny_model, "--samples", 2, "--tile", 64, "--overlap", 16, "--address", ray_address)
    assert run(runner, cli, *args).exit_code == 0
    r = invoke(runner, cli, "audit", store, "--report", tmp_path / "report", "--queue", queue, "--queue-size", 3, "--quiet")
    assert r.exit_code == 0, r.output
    root = zarr.open_group(str(store), mode="r")
    rows = check_layout(queue, root.attrs["segbatch"]["model"]["classes"], root.attrs["segbatch"]["model"]["palette"])
    assert len(rows) == 3
    items = {row["name"]: row for row in csv.DictReader((tmp_path / "report" / "items.csv").open())}
    with rasterio.open(scene) as src:
        for r in rows:
            tile = items[r["item"]]
            row, col, h, w = (int(tile[k]) for k in ("row", "col", "height", "width"))
            with rasterio.open(queue / "geotiff" / f"{r['name']}.tif") as got:
                assert got.crs == src.crs and got.transform == src.window_transform(Window(col, row, w, h))
                assert np.array_equal(got.read(), src.read(window=Window(col, row, w, h)))  # the source's bands as they are
            with rasterio.open(queue / "geotiff" / f"{r['name']}.labels.tif") as got:
                labels = root["labels"][row : row + h, col : col + w]
                assert got.transform == src.window_transform(Window(col, row, w, h)) and np.array_equal(got.read(1), labels)
            assert np.array_equal(np.asarray(Image.open(queue / "labels" / f"{r['name']}.png")), labels)


def test_a_label_error_queue_of_a_store_without_confidence_or_probs_is_refused_before_anything_is_written(runner, cli, tmp_path):
    from segbatch.store import update_attrs

    frames, h, w = 8, 16, 24
    store = tmp_path / "old.zarr"
    root = new_video_store(store, frames, h, w, ("labels", "entropy", "uncertainty"))  # as a store made before confidence existed
    root["labels"][...] = 1
    update_attrs(root, status="complete")
    truth = tmp_path / "truth.npy"
    np.save(truth, np.ones((frames, h, w), np.uint8))
    r = invoke(runner, cli, "audit", store, "--report", tmp_path / "report", "--truth", truth, "--queue", tmp_path / "queue")
    assert r.exit_code == 2 and "neither confidence nor probs" in r.output and "--queue-by uncertainty" in r.output
    assert not (tmp_path / "report").exists() and not (tmp_path / "queue").exists()
