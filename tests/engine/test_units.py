"""The engine's parts one at a time, in this process and without Ray: planners, placers, the pipeline, the lease's guard, the job store.

Each is also covered end to end (tests/engine/test_sources.py,
tests/cli/test_many_inputs.py); here a wrong answer names the part that gave it.
The lease's races and its keeper are tests/test_lease.py's.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from segbatch.batching import batched
from segbatch.engine.groups import fingerprint, model_attrs
from segbatch.engine.images import MAX_UNIT_IMAGES, ImagePlacer, plan_image_units, unit_images_for
from segbatch.engine.job import RunConfig
from segbatch.engine.pipeline import STAGES, PipelineWorker, _Stage
from segbatch.engine.raster import RasterSource, TileUnit
from segbatch.engine.runjob import RunJob, RunUnit
from segbatch.engine.source import UNITS_PER_ACTOR, Item, UnitReport
from segbatch.engine.video import (
    CHUNK_PIXELS,
    MAX_CHUNK_FRAMES,
    MAX_UNIT_FRAMES,
    FramePlacer,
    FrameUnit,
    VideoSource,
    chunk_frames_for,
    plan_frame_units,
    unit_frames_for,
)
from segbatch.errors import InputError, StoreError
from segbatch.jobstore import group_location, group_of, job_attrs, live_inputs, new_job_attrs, reader_target
from segbatch.lease import FENCE_AFTER_S, LEASE_KEY, Lease, LeaseLostError, write_lease
from segbatch.mc import derive_seed
from segbatch.model.checkpoint import load_checkpoint
from segbatch.owner import Owner
from segbatch.store import StoreLayout, base_attrs, chunk_region, digest, finished_units, ledger_array, open_store, update_attrs
from tests.helpers.rasters import write_geotiff
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def ckpt(tiny_model):
    return load_checkpoint(tiny_model)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """16 frames of 48x64 (chunks of 8 frames), a keyframe every 8."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 16, gop=8)


def finishes(fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """`fn()` in a thread: its result, or its exception raised here; fails if it is still blocked after `seconds` (a hang here is the bug)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def new_store(owner: Owner, source: Any, cfg: RunConfig, ckpt: Any, at: Any = None, group: bool = False) -> tuple[Any, list[Any]]:
    """A store (or a job's group) for `source`, made through `owner` as a run makes it (segbatch.engine.groups.prepare), and its units."""
    layout, attrs = source.new_store(1)
    config = fingerprint(cfg, ckpt.sha256, source)
    attrs = base_attrs(attrs.pop("source"), model_attrs(ckpt), cfg.samples, cfg.seed, config, owner.run) | attrs
    return owner.create(layout, attrs, at=at, group=group), list(source.units(attrs))


# frame and image units


@pytest.mark.parametrize(("height", "width", "frames"), [(48, 64, 8), (480, 640, 6), (720, 1280, 2), (1080, 1920, 1), (2160, 3840, 1)])
def test_a_chunk_of_frames_holds_about_chunk_pixels_of_labels(height, width, frames):
    assert chunk_frames_for(height, width) == frames
    assert frames == MAX_CHUNK_FRAMES or frames == 1 or frames * height * width <= CHUNK_PIXELS < (frames + 1) * height * width


@pytest.mark.parametrize(("first", "stop", "unit"), [(0, 160, 16), (3, 46, 8), (5, 9, 16), (0, 17, 8), (100, 101, 8)])
def test_frame_units_cover_the_range_once_in_whole_chunks_from_its_first_frame(first, stop, unit):
    units = plan_frame_units(first, stop, unit)
    assert [u.id for u in units] == list(range(len(units)))
    assert units[0].start == first and units[-1].stop == stop
    assert all(a.stop == b.start for a, b in itertools.pairwise(units))  # consecutive: no gap, no overlap
    assert all(u.start < u.stop for u in units)
    assert all(u.stop - u.start == unit for u in units[:-1]) and units[-1].stop - units[-1].start <= unit
    assert all((u.start - first) % unit == 0 for u in units)  # store rows start - first: on the chunk grid when `unit` is whole chunks


def test_a_unit_of_frames_spans_a_gop_when_the_video_is_long_enough():
    """Seeking to a keyframe and decoding forward costs a GOP: a unit covers one where that leaves each actor enough units."""
    assert unit_frames_for(8, 12, 10_000, 1) == 16  # a 12-frame GOP in chunks of 8: two chunks
    assert unit_frames_for(8, 250, 10_000, 1) == 256  # x264's default GOP: 32 chunks, decoded once
    assert unit_frames_for(8, 600, 100_000, 1) == MAX_UNIT_FRAMES  # a longer GOP: at most MAX_UNIT_FRAMES
    assert unit_frames_for(8, 4, 10_000, 1) == 8  # a GOP shorter than a chunk: one chunk (never less)
    assert unit_frames_for(1, 12, 10_000, 4) == 12  # 4K (chunks of one frame): a 12-frame GOP
    assert unit_frames_for(1, 250, 100_000, 4) == 250  # 1080p and up: a whole 250-frame GOP, not 16 frames of it


def test_a_short_video_is_cut_into_enough_units_for_every_actor_even_if_each_decodes_part_of_a_gop_twice():
    """A single long-GOP clip would be one unit: too few units leave actors idle (the reference frames before each are decoded twice)."""
    assert unit_frames_for(8, 250, 160, 2) == 8  # 20 units for 2 actors, though each seeks inside a 250-frame GOP
    assert unit_frames_for(8, 16, 160, 1) == 16  # tests/engine/test_sources.py's clip: 10 units for 1 actor
    assert unit_frames_for(8, 16, 160, 2) == 8  # and 20 for 2
    assert unit_frames_for(8, 250, 5, 8) == 8  # fewer frames than a chunk: still one whole chunk


@pytest.mark.parametrize("actors", [1, 3, 16])
@pytest.mark.parametrize("chunk", [1, 2, 8])
@pytest.mark.parametrize("gop", [1, 12, 250])
@pytest.mark.parametrize("frames", [5, 200, 20_000])
def test_unit_frames_are_whole_chunks_at_most_a_gop_and_enough_units_when_the_frames_allow(actors, chunk, gop, frames):
    n = unit_frames_for(chunk, gop, frames, actors)
    assert n % chunk == 0 and chunk <= n <= max(chunk, MAX_UNIT_FRAMES // chunk * chunk)
    assert n <= max(chunk, -(-gop // chunk) * chunk)  # never longer than a GOP rounded up to whole chunks
    if frames >= chunk * UNITS_PER_ACTOR * actors:
        assert len(plan_frame_units(0, frames, n)) >= UNITS_PER_ACTOR * actors
    if frames >= UNITS_PER_ACTOR * actors * MAX_UNIT_FRAMES:  # load allows any length: a whole GOP
        assert n >= min(gop, MAX_UNIT_FRAMES // chunk * chunk)


@pytest.mark.parametrize(("images", "actors"), [(1, 1), (7, 1), (16, 1), (48, 2), (1000, 1), (1000, 64)])
def test_image_units_cover_the_listing_and_give_every_actor_enough_units(images, actors):
    per_unit = unit_images_for(images, actors)
    units = plan_image_units(images, per_unit)
    assert 1 <= per_unit <= MAX_UNIT_IMAGES
    assert [u.id for u in units] == list(range(len(units)))
    assert [i for u in units for i in range(u.start, u.stop)] == list(range(images))
    assert all(u.stop - u.start == per_unit for u in units[:-1])
    if images >= UNITS_PER_ACTOR * actors:
        assert len(units) >= UNITS_PER_ACTOR * actors
    if images >= UNITS_PER_ACTOR * actors * MAX_UNIT_IMAGES:
        assert per_unit == MAX_UNIT_IMAGES


# placers


def frame_outputs(job: Any, indices: list[int]) -> dict[str, np.ndarray]:
    """Outputs as the model step hands them for frames `indices`: each frame's rows say its index (labels index % 11, floats index / 64)."""
    h, w = job.plan.height, job.plan.width
    out = {"labels": np.stack([np.full((h, w), i % 11, np.uint8) for i in indices])}
    for name in job.outputs[1:]:
        out[name] = np.stack([np.full((h, w), i / 64, job.float_dtype) for i in indices])
    return out


def frames(indices: list[int]) -> list[Item]:
    return [Item(i, np.zeros((1,), np.uint8)) for i in indices]


@pytest.fixture(scope="module")
def video_job(clip, ckpt) -> Any:
    """The clip's worker half, cut to frames 2:16 (store rows 0:14, chunks of 8: the last one 6 rows)."""
    job = VideoSource(RunConfig(input=str(clip), out="unused.zarr", samples=2), ckpt).job("unused.zarr")
    assert job.chunk_frames == 8 and job.outputs == ("labels", "entropy", "confidence", "uncertainty")
    return replace(job, first_frame=2)


def test_a_frame_placer_writes_a_chunk_when_the_next_chunks_first_frame_arrives(video_job):
    placer = FramePlacer(video_job, FrameUnit(0, 2, 16), 11)
    assert placer.put(frames([2, 3, 4]), frame_outputs(video_job, [2, 3, 4])) == []
    assert placer.put(frames([5, 6, 7]), frame_outputs(video_job, [5, 6, 7])) == []
    assert placer.put(frames([8, 9]), frame_outputs(video_job, [8, 9])) == []  # the chunk is full, but only frame 10 says it is done
    (first,) = placer.put(frames([10, 11, 12]), frame_outputs(video_job, [10, 11, 12]))
    assert first.region == (slice(0, 8),) and first.digests
    expected = frame_outputs(video_job, list(range(2, 10)))
    assert first.arrays.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(first.arrays[name], expected[name], err_msg=name)

    placer.put(frames([13]), frame_outputs(video_job, [13]))  # frames 14 and 15 never decode
    (last,) = placer.close()
    assert last.region == (slice(8, 14),)  # the edge chunk, clipped at the array's end
    for name in expected:  # the chunk handed out first is not touched by later frames
        np.testing.assert_array_equal(first.arrays[name], expected[name], err_msg=name)
    decoded = frame_outputs(video_job, [10, 11, 12, 13])
    np.testing.assert_array_equal(last.arrays["labels"][:4], decoded["labels"])
    assert (last.arrays["labels"][4:] == 255).all()  # never decoded: nodata
    for name in ("entropy", "confidence", "uncertainty"):
        np.testing.assert_array_equal(last.arrays[name][:4], decoded[name])
        assert last.arrays[name].dtype == np.float16 and np.isnan(last.arrays[name][4:]).all()


def test_a_frame_placer_closes_chunks_nothing_arrived_for_as_fill(video_job):
    placer = FramePlacer(video_job, FrameUnit(0, 2, 16), 11)
    assert placer.put(frames([2]), frame_outputs(video_job, [2])) == []  # the decoder gave up after the unit's first frame
    writes = placer.close()
    assert [w.region for w in writes] == [(slice(0, 8),), (slice(8, 14),)]
    assert (writes[0].arrays["labels"][0] == 2).all() and (writes[0].arrays["labels"][1:] == 255).all()
    assert (writes[1].arrays["labels"] == 255).all() and np.isnan(writes[1].arrays["uncertainty"]).all()
    assert writes[1].arrays["labels"].shape == (6, 48, 64)


@pytest.fixture(scope="module")
def raster_job(tmp_path_factory, ckpt) -> Any:
    """96x128, tiles of 48 (cores of 32): tiles/ arrays of 64x64."""
    raster = write_geotiff(tmp_path_factory.mktemp("raster") / "scene.tif", height=96, width=128)
    job = RasterSource(RunConfig(input=str(raster), out="unused.zarr", tile=48, overlap=8), ckpt).job("unused.zarr")
    assert job.tile_side == (64, 64) and job.store_dtype == "float16"
    return job


def test_a_tile_placer_quantises_probabilities_and_marks_pixels_outside_the_data(raster_job):
    """Probabilities are quantised where the model ran (`from_model`, on the device); the placer masks and pads them."""
    valid = np.ones((48, 40), bool)  # a window 48 high, 40 wide
    valid[:10, :5] = False
    probs = torch.tensor([0.1, 0.25, 0.65]).expand(1, 48, 48, 3).contiguous()  # channel-last, padded to 48 wide
    uncertainty = torch.full((1, 48, 48), 0.125)
    back = raster_job.from_model({"probs": probs, "uncertainty": uncertainty})
    assert back["probs"].dtype == torch.uint8 and back["uncertainty"].dtype == torch.float16  # what crosses back to the host
    placer = raster_job.placer(TileUnit(5), 3)
    (write,) = placer.put([Item(5, np.zeros(1), info=valid)], {name: value.numpy() for name, value in back.items()})
    assert write.region == (slice(5, 6),) and not write.digests  # tiles/ is scratch: verify checks the stitched chunks
    q, u = write.arrays["tiles/probs"], write.arrays["tiles/uncertainty"]
    assert q.shape == (1, 3, 64, 64) and q.dtype == np.uint8
    assert (q[0, :, 10:48, :40].reshape(3, -1).T == [25, 64, 165]).all() and (q[0, :, :10, 5:40].reshape(3, -1).T == [25, 64, 165]).all()  # round(p * 254)
    assert (q[0, :, :10, :5] == 255).all()  # nodata
    assert (q[0, :, 48:, :] == 255).all() and (q[0, :, :, 40:] == 255).all()  # beyond the window (and the model's padding)
    assert u.shape == (1, 64, 64) and u.dtype == np.float16
    assert (u[0, 10:48, :40] == 0.125).all() and (u[0, :48, 5:40] == 0.125).all()
    assert np.isnan(u[0, :10, :5]).all() and np.isnan(u[0, 48:, :]).all() and np.isnan(u[0, :, 40:]).all()
    assert placer.close() == []


def test_a_whole_tile_all_data_is_written_as_the_model_gave_it_and_any_other_is_masked():
    from segbatch.engine.raster import _masked

    probs = np.arange(3 * 64 * 64, dtype=np.uint8).reshape(1, 3, 64, 64)
    assert _masked(probs, np.ones((64, 64), bool), (64, 64), 255, np.uint8) is probs  # no copy
    valid = np.ones((64, 64), bool)
    valid[3, 4] = False
    q = _masked(probs, valid, (64, 64), 255, np.uint8)
    assert q is not probs and (q[0, :, 3, 4] == 255).all() and (q[valid[None].repeat(3, 0)[None]] == probs[valid[None].repeat(3, 0)[None]]).all()
    assert np.isnan(_masked(np.zeros((1, 64, 64), np.float32), valid, (64, 64), np.nan, np.float16)[0, 3, 4])


def test_a_tile_placer_without_sampling_writes_no_uncertainty(raster_job):
    valid = np.ones((48, 48), bool)
    back = raster_job.from_model({"probs": torch.full((1, 48, 48, 3), 1 / 3)})
    assert set(back) == {"probs"}
    (write,) = raster_job.placer(TileUnit(0), 3).put([Item(0, np.zeros(1), info=valid)], {"probs": back["probs"].numpy()})
    assert set(write.arrays) == {"tiles/probs"}
    assert (write.arrays["tiles/probs"][0, :, :48, :48] == 85).all()  # 254 / 3 = 84.67


def test_an_image_placer_writes_its_images_rows_and_columns_at_once():
    outputs = {"labels": np.zeros((1, 30, 40), np.uint8), "entropy": np.zeros((1, 30, 40), np.float16)}
    placer = ImagePlacer()
    (write,) = placer.put([Item(7, np.zeros((3, 30, 40), np.float32))], outputs)
    assert write.region == (slice(7, 8), slice(0, 30), slice(0, 40)) and write.digests
    assert write.arrays is outputs
    assert placer.close() == []


# the pipeline's stage threads


def test_an_error_in_a_stage_thread_is_raised_where_the_model_thread_waits_on_it():
    def fails_later(stage: _Stage) -> None:
        time.sleep(0.3)  # the model thread is waiting in get() by then
        raise ValueError("decoder broke")

    reader = _Stage(fails_later, queue.Queue(2))
    reader.start()
    with pytest.raises(ValueError, match="decoder broke"):
        finishes(reader.get)

    def takes_one_then_fails(stage: _Stage) -> None:
        raise OSError(f"disk full writing {stage.take()}")

    writer = _Stage(takes_one_then_fails, queue.Queue(1))
    writer.start()
    with pytest.raises(OSError, match="disk full writing 0"):
        finishes(lambda: [writer.put(i) for i in itertools.count()])  # blocks once the queue is full, until the error

    def fails_at_once(stage: _Stage) -> None:
        raise RuntimeError("at once")

    failed = _Stage(fails_at_once, queue.Queue(1))
    failed.start()
    with pytest.raises(RuntimeError, match="at once"):
        finishes(failed.join)


def test_a_stage_hands_over_what_it_made_then_none_when_it_ends():
    def two(stage: _Stage) -> None:
        stage.emit("a")
        stage.emit("b")

    stage = _Stage(two, queue.Queue(2))
    stage.start()
    assert finishes(lambda: [stage.get() for _ in range(3)]) == ["a", "b", None]
    stage.join()


def test_a_stage_runs_at_most_its_queue_ahead_and_stop_ends_it_quietly_wherever_it_waits():
    def endless(stage: _Stage) -> None:
        for i in itertools.count():
            stage.emit(i)

    channel: queue.Queue[Any] = queue.Queue(2)
    ahead = _Stage(endless, channel)
    ahead.start()
    deadline = time.monotonic() + 5
    while not channel.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert channel.qsize() == 2 and ahead.thread.is_alive()  # bounded: blocked on the full queue, not producing more
    assert [ahead.get() for _ in range(5)] == [0, 1, 2, 3, 4]  # in order
    ahead.stop()
    ahead.thread.join(5)
    assert not ahead.thread.is_alive() and ahead.error is None

    idle = _Stage(lambda stage: stage.take(), queue.Queue(1))  # a writer waiting for a batch that never comes
    idle.start()
    time.sleep(0.2)
    assert idle.thread.is_alive()
    idle.stop()
    idle.thread.join(5)
    assert not idle.thread.is_alive() and idle.error is None
    idle.join()  # nothing to raise


# the worker, in this process


@pytest.fixture
def no_ray(monkeypatch):
    """`import ray` fails: what runs here needs no Ray."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.fixture
def torch_threads():
    """The worker sets torch's threads for the process: put them back for the tests after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_unit_runs_through_the_worker_into_its_chunks_and_ledger_entry(tmp_path, clip, ckpt, tiny_model, no_ray, torch_threads, monkeypatch):
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)  # the worker sets it for its process: gone again after the test
    store = tmp_path / "s.zarr"
    cfg = RunConfig(input=str(clip), out=str(store), samples=2, batch_size=3)
    source = VideoSource(cfg, ckpt)
    with Owner(store, Lease.new()) as owner:
        _, units = new_store(owner, source, cfg, ckpt)
        assert [(u.start, u.stop) for u in units] == [(0, 8), (8, 16)]
        step = source.step(str(tiny_model))
        worker = PipelineWorker(RunJob(owner.fence(), step))
        assert os.environ["GDAL_NUM_THREADS"] == str(step.threads)  # GDAL decodes on the actor's CPUs, as torch computes
        worker.device_name()  # loads the model
        worker.node = "node-1"  # what Ray names the node (outside Ray there is none, and a ledger entry's node must be a string)
        job = source.job(str(store))
        unit = units[1]
        entry = worker.process(RunUnit("", unit, source.size(unit), job))

        assert entry["unit"] == 1 and entry["frames"] == [8, 16] and entry["run"] == owner.run and entry["node"] == "node-1"
        assert entry["missing"] == [] and entry["damaged"] == [] and set(entry["stages"]) == set(STAGES)
        names = ("labels", "entropy", "confidence", "uncertainty")
        assert set(entry["chunks"]) == {f"{name}/1.0.0" for name in names}
        root = open_store(store)
        assert finished_units(root) == {1: entry}  # its ledger row, every field checked as a reader checks it
        for key, recorded in entry["chunks"].items():  # each digest is the chunk's as it reads back
            name, index = key.split("/")
            arr = root[name]
            assert digest(arr[chunk_region(arr, [int(i) for i in index.split(".")])], arr.fill_value) == recorded

        # what the model step gives for the unit's frames, batch by batch (3, 3, 2 from its first frame), each in its row
        items = list(job.read(unit, UnitReport()))
        expected: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for batch in batched(iter(items), step.batch_size):
            x = job.to_model(torch.from_numpy(np.stack([i.data for i in batch])).to(worker.device))
            out = worker.predict(x, [derive_seed(step.seed, i.index) for i in batch])
            for name in names:
                expected[name].append(out[name].cpu().numpy())
        for name in names:
            np.testing.assert_array_equal(root[name][8:16], np.concatenate(expected[name]), err_msg=name)
        assert (root["labels"][0:8] == 255).all()  # the other unit's chunk: untouched

        # another run takes the store over: the next unit writes nothing, not even its ledger entry
        now = time.time()
        write_lease(store, Lease("intruder", "elsewhere", 4242, now, now))
        with pytest.raises(LeaseLostError, match="now belongs to run intruder"):
            worker.process(RunUnit("", units[0], source.size(units[0]), job))
        root = open_store(store)
        assert ledger_array(root)[0] == "" and (root["labels"][0:8] == 255).all() and np.isnan(root["uncertainty"][0:8]).all()


def test_two_units_sent_together_read_in_the_order_they_came_the_second_going_on_with_the_firsts_decoder(
    tmp_path, clip, ckpt, tiny_model, no_ray, torch_threads, monkeypatch
):
    """An actor gets two units at once (a stretch's first two, or a pool filling both slots): the second, starting where
    the first ends, waits for the first to begin reading and goes on with its decoder, however the threads run."""
    import segbatch.engine.video as engine_video
    import segbatch.sources.video as video

    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    store = tmp_path / "s.zarr"
    cfg = RunConfig(input=str(clip), out=str(store), samples=2, batch_size=3)
    source = VideoSource(cfg, ckpt)
    opened: list[int] = []

    class Counted(video._Decoding):
        def __init__(self, plan: Any, key: int, start: int, hwaccel: str | None) -> None:
            opened.append(start)
            super().__init__(plan, key, start, hwaccel)

    monkeypatch.setattr(video, "_Decoding", Counted)
    video._parked.close()  # no decoder an earlier test left where a range ended
    # the worst order the threads could run in: the first unit's reader waits until the second one's either waits for its
    # turn (then the first goes on) or has read a frame (then it did not wait, and sought)
    go = threading.Event()
    read, frames = PipelineWorker._read, engine_video.read_frames

    def first_waits(self: PipelineWorker, source: Any, unit: Any, report: Any, out: Any, times: Any, before: Any, begun: Any) -> None:
        if unit.unit.id == 0:
            go.wait(30)
            return read(self, source, unit, report, out, times, before, begun)

        class Announced:
            def wait(self, timeout: float | None = None) -> bool:
                go.set()
                return before.wait(timeout)

        return read(self, source, unit, report, out, times, Announced(), begun)

    def second_says(plan: Any, start: int, stop: int, *args: Any) -> Any:
        with closing(frames(plan, start, stop, *args)) as read_:
            for item in read_:
                if start > 0:
                    go.set()
                yield item

    monkeypatch.setattr(PipelineWorker, "_read", first_waits)
    monkeypatch.setattr(engine_video, "read_frames", second_says)
    with Owner(store, Lease.new()) as owner:
        _, units = new_store(owner, source, cfg, ckpt)
        worker = PipelineWorker(RunJob(owner.fence(), source.step(str(tiny_model))))
        worker.device_name()
        worker.node = "node-1"
        job = source.job(str(store))
        entries: dict[int, Any] = {}
        threads = [threading.Thread(target=lambda u=u: entries.setdefault(u.id, worker.process(RunUnit("", u, source.size(u), job)))) for u in units]
        nobody = worker.reading
        threads[0].start()
        deadline = time.monotonic() + 30
        while worker.reading is nobody and time.monotonic() < deadline:  # the first unit has come in (Ray hands calls over in order)
            time.sleep(0.001)
        threads[1].start()
        for t in threads:
            t.join(60)
    assert sorted(entries) == [0, 1] and entries[1]["frames"] == [8, 16]
    assert opened == [0]  # one decoder for both: the second unit did not seek


# the lease's guard: Owner (driver) and Fence (workers)

LAYOUT = StoreLayout(dims=("i",), shape=(4,), chunks=(2,), num_classes=2, units=2, outputs=("labels",))


def test_an_owner_that_lost_its_lease_opens_creates_and_empties_nothing(tmp_path):
    store = tmp_path / "s.zarr"
    with Owner(store, Lease.new()) as owner:
        owner.create(LAYOUT, {"source": {"kind": "video"}})
        owner.open()  # while it holds the lease
        now = time.time()
        write_lease(store, Lease("intruder", "elsewhere", 4242, now, now))
        owner.renew()  # the heartbeat finds the other run's lease
        for attempt in (
            lambda: owner.open(),
            lambda: owner.create(LAYOUT, {}, at=store / "g", group=True),
            lambda: owner.replace(lambda: None),
            lambda: owner.create_job({}),
            lambda: owner.reopen({}),
        ):
            with pytest.raises(LeaseLostError, match="taken over by run intruder"):
                attempt()
        assert not (store / "g").exists() and (store / "zarr.json").exists() and (store / "labels").exists()


def test_an_owner_refuses_a_location_outside_its_root_however_it_is_spelled(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    (tmp_path / "s.zarr-b").mkdir()
    (tmp_path / "link").symlink_to(store)
    owner = Owner(store, Lease.new())
    for outside in (tmp_path / "other.zarr", tmp_path / "s.zarr-b" / "g", store / ".." / "other.zarr", tmp_path):
        with pytest.raises(ValueError, match="is not under"):
            owner.open(at=outside)
    store.mkdir()
    monkeypatch.chdir(tmp_path)
    for inside in (Path("s.zarr/a"), tmp_path / "link" / "b"):  # relative, and through a symlink
        owner.create(LAYOUT, {}, at=inside, group=True)
    assert (store / "a" / "zarr.json").exists() and (store / "b" / "zarr.json").exists()


def test_a_fence_lets_its_run_write_while_it_holds_a_fresh_lease_and_no_longer(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    store.mkdir()
    monkeypatch.chdir(tmp_path)
    owner = Owner(Path("s.zarr"), Lease.new())  # no heartbeat thread here: each lease below stays as written
    fence = pickle.loads(pickle.dumps(owner.fence()))  # as a worker gets it
    assert fence.lease == str(store.resolve()) and fence.run == owner.run  # absolute: a worker's folder is not the driver's
    write_lease(store, owner.lease)
    fence.check()
    now = time.time()
    cases = [
        (replace(owner.lease, heartbeat=now - FENCE_AFTER_S - 5), "has not renewed its lease"),  # the driver stopped renewing
        (replace(owner.lease, heartbeat=now, released=True), "now belongs to run"),  # the run ended
        (Lease("intruder", "elsewhere", 4242, now, now), "now belongs to run intruder"),
    ]
    for lease, message in cases:
        write_lease(store, lease)
        with pytest.raises(LeaseLostError, match=message):
            fence.check()
    (store / LEASE_KEY).unlink()
    with pytest.raises(LeaseLostError, match="has no lease any more"):
        fence.check()


# the job store


def test_a_groups_location_is_inside_the_job_store_as_a_path_or_a_key():
    assert group_location(Path("/data/job.zarr"), "day1--a") == Path("/data/job.zarr/day1--a")
    assert group_location("/data/job.zarr", "c") == Path("/data/job.zarr/c")
    assert group_location("s3://bucket/job.zarr/", "c") == "s3://bucket/job.zarr/c"
    assert group_location("file:///data/job.zarr", "c") == "file:///data/job.zarr/c"


def new_job(inputs: list[dict[str, Any]], ckpt: Any, run: str = "r1") -> dict[str, Any]:
    cfg = RunConfig(input="x", out="y", samples=3, seed=9)
    return new_job_attrs("video", "/data/*.mp4", inputs, model_attrs(ckpt), cfg, {"samples": 3}, run)


def test_a_new_jobs_attributes_read_back_as_written_and_a_tampered_one_is_refused(ckpt):
    inputs = [{"name": "a", "path": "/data/a.mp4", "status": "pending"}]
    attrs = new_job(inputs, ckpt)
    inputs[0]["status"] = "complete"  # the job's list is its own copy
    assert attrs["inputs"] == [{"name": "a", "path": "/data/a.mp4", "status": "pending"}]
    assert (attrs["kind"], attrs["input_kind"], attrs["status"], attrs["runs"], attrs["samples"], attrs["seed"]) == ("job", "video", "running", ["r1"], 3, 9)
    assert job_attrs(SimpleNamespace(attrs={"segbatch": json.loads(json.dumps(attrs))})) == attrs
    for change, message in [
        ({"status": "paused"}, "status 'paused' is not one of running, complete, failed"),
        ({"inputs": [{"name": "a", "status": "pending"}]}, "inputs must be a list of {name, path, status}"),
        ({"runs": "r1"}, "runs is missing or not a list"),
        ({"model": {"arch": "segnet"}}, "model.classes is missing"),
    ]:
        with pytest.raises(StoreError, match=rf"attributes are not what segbatch wrote \(.*{message}"):
            job_attrs(SimpleNamespace(attrs={"segbatch": attrs | change}))
    with pytest.raises(StoreError, match="not a mapping"):
        job_attrs(SimpleNamespace(attrs={"segbatch": [attrs]}))


@pytest.fixture(scope="module")
def job_store(tmp_path_factory, clip, ckpt) -> Path:
    """A job of 8 inputs in every state a reader meets; groups a, b, e, f, g, h exist, c and d have none."""
    store = tmp_path_factory.mktemp("job") / "job.zarr"
    statuses = {"a": "pending", "b": "pending", "c": "failed", "d": "pending", "e": "pending", "f": "pending", "g": "pending", "h": "failed"}
    inputs = [{"name": n, "path": f"/data/{n}.mp4", "status": s} | ({"error": "cannot decode"} if n == "c" else {}) for n, s in statuses.items()]
    cfg = RunConfig(input=str(clip), out=str(store), samples=2)
    source = VideoSource(cfg, ckpt)
    with Owner(store, Lease.new()) as owner:
        owner.create_job(new_job(inputs, ckpt, owner.run))
        groups = {n: new_store(owner, source, cfg, ckpt, at=group_location(store, n), group=True)[0] for n in "abefgh"}
    frames = {"kind": "frames", "frames": [0, 8], "missing": [[3, 4]], "damaged": [], "messages": []}
    update_attrs(groups["a"], status="complete", summary={"frames": 16}, problems=[frames])
    update_attrs(groups["g"], status="damaged", error="1 chunk does not match its digest")
    update_attrs(groups["e"], samples="two")
    (store / "f" / "zarr.json").write_text("{not json")
    update_attrs(groups["h"], status="complete", summary={"frames": 16})  # the job's list says it failed: that stands
    return store


def test_live_inputs_read_each_groups_own_status_and_figures(job_store):
    attrs = job_attrs(zarr.open_group(str(job_store), mode="r"))
    live = {i["name"]: i for i in live_inputs(job_store, attrs)}
    assert list(live) == list("abcdefgh")
    path = {n: f"/data/{n}.mp4" for n in live}
    assert live["a"] == {"name": "a", "path": path["a"], "status": "complete", "group_status": "complete", "items": 16, "problems": 1}
    assert live["b"] == {"name": "b", "path": path["b"], "status": "pending", "group_status": "running", "items": None, "problems": 0}
    assert live["c"] == {"name": "c", "path": path["c"], "status": "failed", "error": "cannot decode"}  # no group: as the job's list says
    assert live["d"] == {"name": "d", "path": path["d"], "status": "pending"}
    assert live["e"] == {"name": "e", "path": path["e"], "status": "failed", "error": "its group's attributes were altered"}
    assert live["f"] == {"name": "f", "path": path["f"], "status": "failed", "error": "its group is unreadable"}
    assert live["g"]["status"] == "failed" and live["g"]["group_status"] == "damaged" and live["g"]["error"] == "1 chunk does not match its digest"
    assert live["h"] == {"name": "h", "path": path["h"], "status": "failed"}


def test_a_reader_is_pointed_at_the_job_one_of_its_groups_or_told_which_to_name(job_store, tmp_path, clip, ckpt):
    job = str(job_store)
    attrs, target = reader_target(job, None, "export")
    assert attrs == job_attrs(zarr.open_group(job, mode="r")) and target == job
    assert reader_target(job, "a", "export") == (None, group_location(job, "a"))
    assert group_of(job, "a", "verify") == group_location(job, "a")
    some = "a, b, c, d, e, ... (8 in all)"
    with pytest.raises(InputError, match=rf"^{job} is a job of 8 inputs; pass --group NAME to verify one of them \({re.escape(some)}\)$"):
        group_of(job, None, "verify")
    with pytest.raises(InputError, match=rf"^{job} has no input named 'zz' \({re.escape(some)}\)$"):
        group_of(job, "zz", "verify")
    with pytest.raises(InputError, match=rf"^input 'c' of {job} has no results \(failed: cannot decode\)$"):
        group_of(job, "c", "verify")
    with pytest.raises(InputError, match=rf"^input 'd' of {job} has no results \(pending\)$"):
        group_of(job, "d", "verify")

    single = tmp_path / "one.zarr"
    cfg = RunConfig(input=str(clip), out=str(single), samples=2)
    with Owner(single, Lease.new()) as owner:
        new_store(owner, VideoSource(cfg, ckpt), cfg, ckpt)
    assert reader_target(single, None, "export") == (None, single)
    assert group_of(single, None, "verify") == single
    with pytest.raises(InputError, match=rf"^--group is for job stores of many inputs; {single} holds one input$"):
        group_of(single, "a", "verify")
