"""Stitch while inferring (issue 15): chunks blended as their tiles finish, consumed tiles deleted, resume of tiles and chunks.

The stitcher's order of events is made deterministic here by running its
tasks synchronously (each task's result is ready when it is submitted), so
what is asserted does not depend on how fast this machine is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import zarr

from segbatch.engine.stitcher import BATCH, Stitcher
from segbatch.stitch import StitchJob, stitch_chunks
from segbatch.store import LEDGER
from segbatch.tiling import plan_tiles
from tests.helpers.drivers import start_driver
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, run

TILE, OVERLAP = 256, 64


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("rasters") / "scene.tif", height=600, width=700)


@pytest.fixture(scope="module")
def kept(ray_address, runner_module, cli_module, scene, tiny_model, tmp_path_factory):
    """A complete raster store with its tiles kept (5 rows x 6 columns of tiles), and its arrays."""
    out = tmp_path_factory.mktemp("kept") / "kept.zarr"
    args = ("--input", scene, "--out", out, "--model", tiny_model, "--samples", 2, "--tile", TILE, "--overlap", OVERLAP, "--actors", 1, "--keep-tiles")
    r = run(runner_module, cli_module, *args)
    assert r.exit_code == 0, r.output
    return out, arrays(out)


class _Now:
    """Ray task stand-in: runs the stitch at once and hands back a ready object reference."""

    def remote(self, job_ref, batch, skipped):
        import ray

        return ray.put(stitch_chunks(ray.get(job_ref), batch, skipped))


def _tiles_on_disk(store, upto: int | None = None) -> int:
    """Tiles whose probabilities are in tiles/ (of tiles 0..upto): zarr keeps chunk (tile, 0, 0, 0) at tiles/probs/c/tile/0/0/0."""
    folder = store / "tiles" / "probs" / "c"
    if not folder.exists():
        return 0
    return sum(1 for p in folder.iterdir() if (upto is None or int(p.name) <= upto) and any(f.is_file() for f in p.rglob("*")))


def test_chunks_are_stitched_as_tiles_finish_and_used_up_tiles_are_deleted(kept, tmp_path, monkeypatch):
    store = tmp_path / "copy.zarr"
    shutil.copytree(kept[0], store)
    root = zarr.open_group(str(store), mode="r+")
    root["labels"][...] = 0  # spoiled: the stitcher must rebuild every chunk
    plan = plan_tiles(600, 700, TILE, OVERLAP)
    assert (plan.rows, plan.cols) == (5, 6)
    entries = {i: json.loads(e) for i, e in enumerate(root[LEDGER][...])}
    job = StitchJob(store=str(store), tiles=plan, run=zarr.open_group(str(store)).attrs["segbatch"]["runs"][0])
    import segbatch.stitch as stitch_module

    checks = []
    stitcher = Stitcher(job, root, {}, keep_tiles=False, check=lambda: checks.append(1), cpus=2)
    stitcher.task = _Now()
    monkeypatch.setattr(stitch_module, "check_fence", lambda store, run: None)  # the copy has no live lease; fencing is tested elsewhere
    on_disk, stitched = [], []
    for tid in range(len(plan)):
        stitcher.tile_done(tid, entries[tid])
        on_disk.append(_tiles_on_disk(store, upto=tid))  # the tiles "written" so far that are still there
        stitched.append(len(stitcher.stitched))
    # chunks were stitched while tiles were still coming: by the time the last row starts, all but the last two rows are
    first_of_last_row = (plan.rows - 1) * plan.cols
    assert stitched[first_of_last_row - 1] >= (plan.rows - 2) * plan.cols - BATCH
    # tiles/ never held the whole raster: about three rows of tiles plus a batch at most
    assert max(on_disk) <= 3 * plan.cols + BATCH < len(plan)
    stitcher.drain()
    assert len(stitcher.stitched) == len(plan) and _tiles_on_disk(store) == 0 and checks
    assert_same(arrays(store), kept[1])  # bit for bit what the run (and its kept tiles) gave
    assert all(json.loads(e)["stitched"] for e in root[LEDGER][...])
    figures = stitcher.figures()
    # the stitcher counts a tile the moment it arrives, before the stitch it completes deletes its neighbours
    assert max(on_disk) <= figures["tiles_peak"] <= max(on_disk) + 1
    assert 0.5 < figures["stitch_overlap"] < 1  # most of the stitch ran while tiles were still coming


def test_segbatch_stitch_of_a_store_stopped_mid_stitch_stitches_only_what_is_left(kept, tmp_path, monkeypatch, runner, cli):
    """A run without --keep-tiles that stopped while stitching has deleted the tiles it used up: those chunks must stay as they are."""
    store = tmp_path / "copy.zarr"
    shutil.copytree(kept[0], store)
    root = zarr.open_group(str(store), mode="r+")
    plan = plan_tiles(600, 700, TILE, OVERLAP)
    entries = {i: {k: v for k, v in json.loads(e).items() if k != "stitched"} for i, e in enumerate(root[LEDGER][...])}
    for i, entry in entries.items():
        root[LEDGER][i] = json.dumps(entry)  # as tiles come back from their workers: nothing stitched yet
    import segbatch.stitch as stitch_module
    from segbatch.store import update_attrs

    monkeypatch.setattr(stitch_module, "check_fence", lambda store, run: None)
    job = StitchJob(store=str(store), tiles=plan, run="run-1")
    stitcher = Stitcher(job, root, {}, keep_tiles=False, check=lambda: None, cpus=2)
    stitcher.task = _Now()
    for tid in range(len(plan)):
        stitcher.tile_done(tid, entries[tid])  # every tile done; the chunks of the last rows not stitched yet
    assert 0 < len(stitcher.stitched) < len(plan) and _tiles_on_disk(store) < len(plan)
    update_attrs(root, drop=("summary",), status="stitching")  # the driver died here
    monkeypatch.undo()
    r = runner.invoke(cli, ["stitch", str(store), "--quiet"])
    assert r.exit_code == 0, r.output
    assert_same(arrays(store), kept[1])  # the chunks stitched before the stop were not redone from deleted tiles


def test_a_killed_raster_run_resumes_tiles_and_chunks_bit_for_bit(ray_address, runner, cli, tiny_model, tmp_path):
    scene = write_geotiff(tmp_path / "big.tif", height=900, width=1000)
    args = ("--input", scene, "--model", tiny_model, "--samples", 2, "--tile", TILE, "--overlap", OVERLAP, "--actors", 1)
    clean = tmp_path / "clean.zarr"
    assert run(runner, cli, *args, "--out", clean).exit_code == 0
    out = tmp_path / "killed.zarr"
    proc = start_driver(ray_address, *args, "--out", out)
    deadline = time.time() + 180

    def stitched() -> int:
        try:
            return sum(1 for e in zarr.open_group(str(out), mode="r")[LEDGER][...] if e and json.loads(e).get("stitched"))
        except Exception:
            return 0

    while stitched() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = zarr.open_group(str(out), mode="r")
    total = root[LEDGER].shape[0]
    assert 1 <= stitched() < total and root.attrs["segbatch"]["status"] == "running", "the run was not killed mid-way"
    r = run(runner, cli, *args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert_same(arrays(out), arrays(clean))
    attrs = zarr.open_group(str(out), mode="r").attrs["segbatch"]
    assert attrs["status"] == "complete" and "tiles" not in zarr.open_group(str(out), mode="r")
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0
    summary = zarr.open_group(str(clean), mode="r").attrs["segbatch"]["summary"]
    assert {"stitch_task_seconds", "stitch_overlap", "tiles_peak"} <= set(summary) and summary["tiles_peak"] <= summary["tiles"]


def test_info_says_how_much_of_the_stitch_overlapped_inference(runner, cli, kept):
    text = runner.invoke(cli, ["info", str(kept[0])]).output
    summary = zarr.open_group(str(kept[0]), mode="r").attrs["segbatch"]["summary"]
    assert f"{summary['stitch_overlap']:.0%} of it overlapped inference" in text
    assert f"at most {summary['tiles_peak']} of {summary['tiles']} tiles in tiles/" in text
