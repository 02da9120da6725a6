"""One writer, also at birth and at replacement (DESIGN.md rule 7): a store is owned from the moment a run claims its name.

A run claims its store before it writes or deletes anything, a store not
built yet included; another run's --overwrite or --resume is refused in one
line while that claim is live, whatever the timing. A job's groups are the
job's: no run writes into them from outside. The first run is held at a
known point (its lease exists, read from the store), never after a sleep.
"""

import os
import signal
import time

import pytest
import zarr

from segbatch.lease import Lease, LeaseKeeper, claim, read_lease, write_lease
from tests.helpers.drivers import start_driver
from tests.helpers.stores import arrays, assert_same, invoke, one_line, run
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "drive.mp4", 16, gop=8)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "long.mp4", 160, gop=16)


def args_of(video, out, model, *extra):
    return ("--input", video, "--out", out, "--model", model, "--samples", 2, *extra)


def wait_for_claim(out, proc, timeout=120.0):
    """Return once the driver's lease is in the store (it claimed the name), or the driver ended."""
    deadline = time.time() + timeout
    while read_lease(out) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert read_lease(out) is not None, "the first run never claimed its store"


@pytest.mark.parametrize("flag", ["--overwrite", "--resume", None])
def test_a_store_being_created_is_refused_to_every_other_run(ray_address, runner, cli, video, tiny_model, tmp_path, flag):
    out = tmp_path / "new.zarr"
    holder = Lease.new()  # this process: alive, on this host, claimed the name and has not built the store yet
    claim(out, holder)
    assert not (out / "zarr.json").exists()
    r = run(runner, cli, *args_of(video, out, tiny_model, *([flag] if flag else [])))
    assert r.exit_code == 2
    assert f"being created by run {holder.run}" in one_line(r.output)
    assert read_lease(out).run == holder.run  # the refused run wrote nothing, not even its own claim
    assert sorted(p.name for p in out.iterdir()) == ["lease"]
    info = invoke(runner, cli, "info", out)
    assert info.exit_code == 2 and f"still being created by run {holder.run}" in one_line(info.output)


def test_overwrite_and_resume_of_a_run_held_at_its_claim_are_refused_and_the_first_run_finishes(ray_address, runner, cli, long_video, tiny_model, tmp_path):
    out = tmp_path / "live.zarr"
    first = start_driver(ray_address, *args_of(long_video, out, tiny_model, "--actors", 1))
    wait_for_claim(out, first)
    os.kill(first.pid, signal.SIGSTOP)  # held wherever it is after its claim: before, while or after building the store
    try:
        assert first.poll() is None, "the first run ended before the second one could try"
        overwrite = run(runner, cli, *args_of(long_video, out, tiny_model, "--overwrite"))
        resume = run(runner, cli, *args_of(long_video, out, tiny_model, "--resume"))
        held = read_lease(out)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for r in (overwrite, resume):
        assert r.exit_code == 2
        assert f"pid {first.pid}" in one_line(r.output) and ("being created by run" in r.output or "in use by run" in r.output)
    assert held.pid == first.pid  # neither rewrote the lease
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    assert attrs["status"] == "complete" and len(attrs["runs"]) == 1  # --resume did not add itself to the runs
    clean = tmp_path / "clean.zarr"
    assert run(runner, cli, *args_of(long_video, clean, tiny_model, "--actors", 2)).exit_code == 0
    assert_same(arrays(out), arrays(clean))


def test_a_refused_or_failed_new_run_leaves_no_folder_behind(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "never.zarr"
    r = run(runner, cli, *args_of(video, out, tiny_model, "--gpus-per-actor", 1))  # refused after the claim: the cluster has no GPU
    assert r.exit_code == 2, r.output
    assert not out.exists()


def test_a_claim_whose_run_died_before_building_is_taken_over(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "orphan.zarr"
    out.mkdir()
    write_lease(out, Lease("gone", "elsewhere", 1, time.time() - 600, time.time() - 600))  # another host's claim, not renewed for 10 minutes
    (out / "labels").mkdir()  # a leftover of a creation cut short
    r = run(runner, cli, *args_of(video, out, tiny_model))
    assert r.exit_code == 0, r.output
    assert "taking over" in r.output and "run gone" in r.output
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "complete"
    info = invoke(runner, cli, "verify", out)
    assert info.exit_code == 0, info.output


@pytest.mark.parametrize("url", [False, True], ids=["path", "file url"])
def test_a_folder_that_is_not_a_store_is_never_written_into(runner, cli, video, tiny_model, tmp_path, url):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not yours")
    for flag in ([], ["--overwrite"], ["--resume"]):
        r = run(runner, cli, *args_of(video, f"file://{out}" if url else out, tiny_model, *flag))
        assert r.exit_code == 2 and "not" in one_line(r.output)
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


# 2. A job's groups are fenced by the job


@pytest.fixture(scope="module")
def job(ray_address, runner_module, cli_module, tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    for name in ("a", "b"):
        write_video(folder / f"{name}.mp4", 16, gop=8)
    out = tmp_path_factory.mktemp("job") / "job.zarr"
    r = run(runner_module, cli_module, *args_of(folder, out, tiny_model))
    assert r.exit_code == 0, r.output
    return folder, out


@pytest.mark.parametrize("flag", ["--resume", "--overwrite", None])
def test_a_run_into_a_jobs_group_is_refused(runner, cli, job, tiny_model, flag):
    folder, out = job
    before = arrays(out / "a")
    r = run(runner, cli, *args_of(folder / "a.mp4", out / "a", tiny_model, *([flag] if flag else [])))
    assert r.exit_code == 2
    assert f"inside the segbatch store {out}" in one_line(r.output) and "--resume" in r.output
    assert not (out / "a" / "lease").exists()  # a group never carries a lease of its own
    assert_same(arrays(out / "a"), before)
    assert zarr.open_group(str(out / "a")).attrs["segbatch"]["runs"] == zarr.open_group(str(out / "b")).attrs["segbatch"]["runs"]


def test_a_new_store_inside_another_store_is_refused(runner, cli, job, video, tiny_model):
    _, out = job
    r = run(runner, cli, *args_of(video, out / "a" / "nested.zarr", tiny_model))
    assert r.exit_code == 2 and "inside the segbatch store" in one_line(r.output)
    assert not (out / "a" / "nested.zarr").exists()


def test_stitch_and_verify_of_a_group_path_answer_to_the_jobs_lease(runner, cli, ray_address, tiny_model, tmp_path):
    from tests.helpers.rasters import write_geotiff

    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("s1", "s2"):
        write_geotiff(folder / f"{name}.tif", 96, 96)
    out = tmp_path / "rasters.zarr"
    r = run(runner, cli, "--input", folder, "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 64, "--overlap", 16, "--keep-tiles")
    assert r.exit_code == 0, r.output
    holder = Lease.new()
    with LeaseKeeper(out, holder):  # a live run of the job (this process)
        stitched = invoke(runner, cli, "stitch", out / "s1")
        assert stitched.exit_code == 2 and f"in use by run {holder.run}" in one_line(stitched.output)
        assert not (out / "s1" / "lease").exists()
    assert invoke(runner, cli, "stitch", out / "s1").exit_code == 0  # the job let go: the group is stitched under the job's lease
    assert not (out / "s1" / "lease").exists() and read_lease(out).released
