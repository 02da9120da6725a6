"""Stitch while inferring (issue 15): chunks blended as their tiles finish, consumed tiles deleted, resume of tiles and chunks.

The stitcher's order of events is made deterministic here by running its
tasks synchronously (each task's result is ready when it is submitted), so
what is asserted does not depend on how fast this machine is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
import zarr

from segbatch.engine.stitcher import BATCH, Stitcher, StitchSchedule
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


class TestStitchSchedule:
    """The bookkeeping alone (no Ray, no store): when a chunk is ready, that each is handed out once, when a tile may go."""

    PLAN = plan_tiles(600, 700, TILE, OVERLAP)  # 5 rows x 6 columns; a chunk blends up to 9 tiles

    def contributors(self, cid: int) -> set[int]:
        return set(self.PLAN.contributors(cid))

    def reaches(self, tid: int) -> set[int]:
        return {cid for cid in range(len(self.PLAN)) if tid in self.contributors(cid)}

    def order(self, seed: int) -> list[int]:
        return [int(t) for t in np.random.default_rng(seed).permutation(len(self.PLAN))]

    def test_a_chunk_is_ready_exactly_when_every_tile_reaching_it_is_done(self):
        schedule = StitchSchedule(self.PLAN, {})
        done: set[int] = set()
        handed: set[int] = set()
        for tid in self.order(0):
            schedule.tile_done(tid, {})
            done.add(tid)
            now = schedule.take(len(self.PLAN))
            assert not schedule.ready
            complete = {cid for cid in range(len(self.PLAN)) if self.contributors(cid) <= done}
            assert set(now) == complete - handed, f"after tile {tid}"  # the chunks tile `tid` was the last one missing for, and no other
            handed |= set(now)
        assert handed == set(range(len(self.PLAN)))

    def test_each_chunk_is_handed_out_once_sorted_in_batches_of_at_most_BATCH(self):
        schedule = StitchSchedule(self.PLAN, {})
        handed: list[int] = []
        for tid in self.order(1):
            schedule.tile_done(tid, {})
            if len(schedule.ready) >= BATCH:
                batch = schedule.take()
                assert len(batch) == BATCH and batch == sorted(batch)
                handed += batch
        while schedule.ready:
            batch = schedule.take()
            assert 0 < len(batch) <= BATCH and batch == sorted(batch)
            handed += batch
        assert sorted(handed) == list(range(len(self.PLAN)))  # every chunk, none twice
        assert schedule.take() == []

    def test_the_chunks_ready_longest_go_first(self):
        schedule = StitchSchedule(self.PLAN, {})
        for tid in range(len(self.PLAN)):  # row by row: the first rows' chunks become ready first
            schedule.tile_done(tid, {})
        first = schedule.ready[:3]
        assert schedule.take(3) == sorted(first) and not set(first) & set(schedule.ready)

    def test_skipped_tiles_count_as_done_and_have_nothing_to_free(self):
        skipped = {0, 7, 8, 29}
        schedule = StitchSchedule(self.PLAN, {})
        done: set[int] = set()
        freed: list[int] = []
        for tid in self.order(2):
            schedule.tile_done(tid, {"skipped": True} if tid in skipped else {})
            done.add(tid)
            assert schedule.live == len(done - skipped) - len(freed)  # a skipped tile wrote nothing to tiles/
            while schedule.ready:
                batch = schedule.take()
                assert schedule.skipped_among(batch) == {t for cid in batch for t in self.contributors(cid)} & skipped
                freed += schedule.stitched_now(batch)
        assert schedule.left() == 0 and schedule.skipped == skipped
        assert sorted(freed) == sorted(set(range(len(self.PLAN))) - skipped)  # every written tile goes once; a skipped one never
        assert schedule.live == 0 and schedule.peak <= len(self.PLAN) - len(skipped)

    def test_a_tile_is_freed_once_in_the_stitch_of_the_last_chunk_it_reaches(self):
        schedule = StitchSchedule(self.PLAN, {})
        done: set[int] = set()
        freed: list[int] = []
        live = []
        for tid in range(len(self.PLAN)):
            schedule.tile_done(tid, {})
            done.add(tid)
            live.append(schedule.live)
            while len(schedule.ready) >= BATCH:
                before = set(schedule.stitched)
                batch = schedule.take()
                now = schedule.stitched_now(batch)
                for t in now:
                    assert t in done and self.reaches(t) <= schedule.stitched and not self.reaches(t) <= before, f"tile {t}"
                for t in done - set(freed) - set(now):
                    assert not self.reaches(t) <= schedule.stitched, f"tile {t} is used up but was not freed"
                freed += now
                assert schedule.live == len(done) - len(freed)
        while schedule.ready:
            freed += schedule.stitched_now(schedule.take())
        assert sorted(freed) == list(range(len(self.PLAN))) and schedule.live == 0
        assert schedule.peak == max(live) < len(self.PLAN)  # tiles/ never held the whole raster

    def _first_run(self, tiles: int, batches: int) -> tuple[StitchSchedule, dict[int, dict]]:
        """A run stopped after `tiles` tiles (row by row) and `batches` stitch batches: its schedule, and the ledger it left."""
        schedule = StitchSchedule(self.PLAN, {})
        for tid in range(tiles):
            schedule.tile_done(tid, {"skipped": True} if tid == 2 else {})
        for _ in range(batches):
            schedule.stitched_now(schedule.take())
        return schedule, {tid: {"skipped": tid == 2, "stitched": tid in schedule.stitched} for tid in range(tiles)}

    def test_a_resumed_run_hands_out_only_the_chunks_not_stitched_and_frees_only_the_tiles_still_there(self):
        first, ledger = self._first_run(tiles=20, batches=1)
        assert first.stitched and first.ready  # stopped with chunks stitched, and chunks ready but not stitched
        schedule = StitchSchedule(self.PLAN, ledger)
        assert schedule.stitched == first.stitched and schedule.left() == len(self.PLAN) - len(first.stitched)
        assert set(schedule.ready) == {cid for cid in range(len(self.PLAN)) if self.contributors(cid) <= set(ledger)} - first.stitched
        gone = {t for t in ledger if self.reaches(t) <= first.stitched}  # freed by the first run
        assert gone and schedule.live == len(set(ledger) - gone - {2})
        for tid in range(20, len(self.PLAN)):
            schedule.tile_done(tid, {})
        handed, freed = [], []
        while schedule.ready:
            batch = schedule.take()
            handed += batch
            freed += schedule.stitched_now(batch)
        assert not set(handed) & first.stitched and set(handed) | first.stitched == set(range(len(self.PLAN)))
        assert sorted(freed) == sorted(set(range(len(self.PLAN))) - gone - {2}) and schedule.live == 0

    def test_again_stitches_every_chunk_anew(self):
        first, ledger = self._first_run(tiles=len(self.PLAN), batches=2)
        schedule = StitchSchedule(self.PLAN, ledger, again=True)
        assert schedule.stitched == set() and schedule.left() == len(self.PLAN)
        assert sorted(schedule.ready) == list(range(len(self.PLAN)))  # every tile is kept and done: every chunk is ready
        assert schedule.live == len(self.PLAN) - 1 and schedule.skipped == {2}


class _Now:
    """Ray task stand-in: runs the stitch at once and hands back a ready object reference."""

    def remote(self, job_ref, batch, skipped):
        import ray

        return ray.put(stitch_chunks(ray.get(job_ref), batch, skipped))


def _tiles_on_disk(store, upto: int | None = None) -> int:
    """Tiles whose probabilities are in tiles/ (of tiles 0..upto): zarr keeps chunk (tile, 0, 0, 0) at tiles/probs/c.<tile>.0.0.0."""
    folder = store / "tiles" / "probs"
    found = [re.fullmatch(r"c\.(\d+)\.0\.0\.0", p.name) for p in folder.iterdir()] if folder.exists() else []
    return sum(1 for m in found if m and (upto is None or int(m.group(1)) <= upto))


def test_chunks_are_stitched_as_tiles_finish_and_used_up_tiles_are_deleted(kept, tmp_path, monkeypatch):
    store = tmp_path / "copy.zarr"
    shutil.copytree(kept[0], store)
    root = zarr.open_group(str(store), mode="r+")
    root["labels"][...] = 0  # spoiled: the stitcher must rebuild every chunk
    plan = plan_tiles(600, 700, TILE, OVERLAP)
    assert (plan.rows, plan.cols) == (5, 6)
    entries = {i: json.loads(e) for i, e in enumerate(root[LEDGER][...])}
    job = StitchJob(store=str(store), tiles=plan, run=zarr.open_group(str(store)).attrs["segbatch"]["runs"][0])
    import segbatch.owner as owner_module

    checks = []
    stitcher = Stitcher(job, root, {}, keep_tiles=False, check=lambda: checks.append(1), cpus=2)
    stitcher.task = _Now()
    monkeypatch.setattr(owner_module, "check_fence", lambda store, run, fresh: None)  # the copy has no live lease; fencing is tested elsewhere
    on_disk, stitched = [], []
    for tid in range(len(plan)):
        stitcher.tile_done(tid, entries[tid])
        on_disk.append(_tiles_on_disk(store, upto=tid))  # the tiles "written" so far that are still there
        stitched.append(len(stitcher.schedule.stitched))
    # chunks were stitched while tiles were still coming: by the time the last row starts, all but the last two rows are
    first_of_last_row = (plan.rows - 1) * plan.cols
    assert stitched[first_of_last_row - 1] >= (plan.rows - 2) * plan.cols - BATCH
    # tiles/ never held the whole raster: about three rows of tiles plus a batch at most
    assert max(on_disk) <= 3 * plan.cols + BATCH < len(plan)
    stitcher.drain()
    assert len(stitcher.schedule.stitched) == len(plan) and _tiles_on_disk(store) == 0 and checks
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
    import segbatch.owner as owner_module
    from segbatch.store import update_attrs

    monkeypatch.setattr(owner_module, "check_fence", lambda store, run, fresh: None)
    job = StitchJob(store=str(store), tiles=plan, run="run-1")
    stitcher = Stitcher(job, root, {}, keep_tiles=False, check=lambda: None, cpus=2)
    stitcher.task = _Now()
    for tid in range(len(plan)):
        stitcher.tile_done(tid, entries[tid])  # every tile done; the chunks of the last rows not stitched yet
    assert 0 < len(stitcher.schedule.stitched) < len(plan) and _tiles_on_disk(store) < len(plan)
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
    written = summary["tiles"] - summary["skipped_tiles"]
    assert summary["stitch_tile_reads"] >= written  # every written tile is read back at least once
    assert f"tiles read back {summary['stitch_tile_reads'] / written:.1f} times each" in text


def test_the_tiles_are_encoded_for_speed_and_the_results_for_size(kept):
    """tiles/ is read back by the stitch and removed: LZ4; the arrays a user keeps: Zstd (labels), Blosc bit-shuffled (floats)."""
    import zarr

    root = zarr.open_group(kept[0], mode="r")
    compressor = {name: root[name].metadata.codecs[-1].to_dict() for name in ("tiles/probs", "tiles/uncertainty", "labels", "entropy")}
    assert compressor["tiles/probs"]["name"] == "blosc" and compressor["tiles/probs"]["configuration"]["cname"] == "lz4"
    assert compressor["tiles/probs"]["configuration"]["shuffle"] == "noshuffle"
    assert compressor["labels"]["name"] == "zstd"
    assert compressor["tiles/uncertainty"]["configuration"]["shuffle"] == compressor["entropy"]["configuration"]["shuffle"] == "bitshuffle"
