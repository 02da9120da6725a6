"""Data safety (DESIGN.md, rules 7 and 8): one run owns a store, no command destroys a job's files, stores are checked when read.

Each test plays what a user (or a scheduler) does to a store, through the
real CLI: a second run on a live store, a takeover after a crash, a store
tampered with or damaged on disk, `segbatch verify` and the repair by
--resume, exports and overwrites aimed at the job's own files.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from segbatch.lease import Lease, read_lease, write_lease
from segbatch.store import LEDGER
from tests.helpers.drivers import start_driver, wait_for_units
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke, one_line, run
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "drive.mp4", 32, gop=8)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "long.mp4", 160, gop=16)


@pytest.fixture(scope="module")
def made(ray_address, runner_module, cli_module, video, tiny_model, tmp_path_factory):
    """A complete video store (4 units of 8 frames) and its arrays, to copy and spoil."""
    out = tmp_path_factory.mktemp("made") / "made.zarr"
    r = run(runner_module, cli_module, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 2)
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(out)).attrs["segbatch"]["unit_frames"] == 8
    return out, arrays(out)


def args_of(video, out, model, *extra):
    return ("--input", video, "--out", out, "--model", model, "--samples", 2, *extra)


def copy_store(made, tmp_path):
    out = tmp_path / "copy.zarr"
    shutil.copytree(made[0], out)
    return out


# 1. Two runs on one store: a lease, and fenced writes


def test_a_live_runs_store_is_refused_to_overwrite_and_resume(ray_address, runner, cli, long_video, tiny_model, tmp_path):
    out = tmp_path / "live.zarr"
    first = start_driver(ray_address, *args_of(long_video, out, tiny_model, "--actors", 1))
    wait_for_units(out, first)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first run where it is (its lease stays live: its process exists)
    try:
        assert first.poll() is None, "the first run ended before the second one could try"
        overwrite = run(runner, cli, "--input", long_video, "--out", out, "--model", tiny_model, "--samples", 1, "--overwrite")
        resume = run(runner, cli, *args_of(long_video, out, tiny_model, "--resume"))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for r in (overwrite, resume):
        assert r.exit_code == 2
        assert "in use by run" in one_line(r.output) and f"pid {first.pid}" in r.output and socket.gethostname() in r.output
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["samples"] == 2 and len(attrs["runs"]) == 1
    clean = tmp_path / "clean.zarr"
    assert run(runner, cli, *args_of(long_video, clean, tiny_model, "--actors", 2)).exit_code == 0
    assert_same(arrays(out), arrays(clean))
    assert read_lease(out).released  # the first run let the store go when it ended


def test_a_run_whose_store_was_taken_over_writes_nothing_more(ray_address, long_video, tiny_model, tmp_path):
    out = tmp_path / "fenced.zarr"
    first = start_driver(ray_address, *args_of(long_video, out, tiny_model, "--actors", 1))
    wait_for_units(out, first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        now = time.time()
        write_lease(out, Lease("intruder", "elsewhere", 4242, now, now))  # another host's run took the store over
        taken = time.time()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 1, err
    assert "run intruder on host elsewhere" in err.strip().splitlines()[-1]
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    assert attrs["status"] == "running"  # the fenced driver marked nothing: the store is the new owner's
    # workers check the lease before every chunk: at most the chunks whose check passed before the takeover land after it
    chunks = [*out.rglob("c.*"), *(p for p in out.rglob("c/*") if p.is_file())]  # the output arrays' chunk files, the ledger's
    late = [p for p in chunks if p.stat().st_mtime > taken + 1.0]
    assert not late, late


def test_a_dead_or_stale_lease_is_taken_over_with_a_warning(ray_address, runner, cli, made, video, tiny_model, tmp_path):
    out = copy_store(made, tmp_path)
    now = time.time()
    write_lease(out, Lease("busy", "elsewhere", 1, now - 5, now - 5))  # another host, renewed 5 s ago: live
    r = run(runner, cli, *args_of(video, out, tiny_model, "--resume"))
    assert r.exit_code == 2 and "in use by run busy on host elsewhere (pid 1" in one_line(r.output)

    write_lease(out, Lease("stale", "elsewhere", 1, now - 900, now - 600))  # not renewed for 10 minutes
    r = run(runner, cli, *args_of(video, out, tiny_model, "--resume"))
    assert r.exit_code == 0, r.output
    assert "warning: taking over" in r.output and "run stale on host elsewhere" in r.output and "has not renewed its lease" in r.output

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    write_lease(out, Lease("crashed", socket.gethostname(), int(gone.stdout), now, now))  # this host, its process gone
    r = run(runner, cli, *args_of(video, out, tiny_model, "--overwrite"))
    assert r.exit_code == 0, r.output
    assert "warning: taking over" in r.output and "which is gone" in r.output
    assert_same(arrays(out), made[1])


def test_ledger_entries_of_another_run_are_not_counted(made, tmp_path, runner, cli):
    out = copy_store(made, tmp_path)
    root = zarr.open_group(str(out), mode="r+")
    entry = json.loads(str(root[LEDGER][2]))
    root[LEDGER][2] = json.dumps({**entry, "run": "a-fenced-off-run"})
    r = invoke(runner, cli, "info", out)
    assert r.exit_code == 2 and "ledger lacks 1 of 4 units (first: 2)" in one_line(r.output)


# 2-4. No command destroys a file of the job


def test_overwrite_refuses_an_input_or_checkpoint_inside_the_store(ray_address, runner, cli, made, video, tiny_model, tmp_path):
    out = copy_store(made, tmp_path)
    inside = shutil.copy(video, out / "clip.mp4")
    r = run(runner, cli, *args_of(inside, out, tiny_model, "--overwrite"))
    assert r.exit_code == 2 and "inside" in one_line(r.output) and "--overwrite would delete" in r.output
    model = shutil.copy(tiny_model, out / "model.pt")
    r = run(runner, cli, *args_of(video, out, model, "--overwrite"))
    assert r.exit_code == 2 and "checkpoint" in one_line(r.output)
    assert Path(inside).is_file() and Path(model).is_file() and (out / "zarr.json").is_file()


def test_export_refuses_the_stores_source_its_checkpoint_and_its_inside(runner, cli, made, video, tiny_model, tmp_path):
    out = copy_store(made, tmp_path)
    before = Path(video).read_bytes(), Path(tiny_model).read_bytes()
    for target, what in ((video, "source"), (tiny_model, "checkpoint"), (out / "overlay.mp4", "inside the store")):
        r = invoke(runner, cli, "export", out, "--to", target, "--overwrite")
        assert r.exit_code == 2 and what in one_line(r.output), r.output
    assert (Path(video).read_bytes(), Path(tiny_model).read_bytes()) == before
    assert not (out / "overlay.mp4").exists()


SPELLINGS = ("plain", "file url", "symlink", "dotdot")


def spelled(path: Path, how: str) -> str:
    """`path` as a user may type it: a file:// URL, through a symlink to its folder, or with a detour through `..`."""
    path = Path(path)
    if how == "file url":
        return f"file://{path}"
    if how == "symlink":
        alias = path.parent.parent / f"alias-of-{path.parent.name}"
        if not alias.exists():
            alias.symlink_to(path.parent)
        return str(alias / path.name)
    if how == "dotdot":
        return f"{path.parent}/../{path.parent.name}/{path.name}"
    return str(path)


@pytest.mark.parametrize("how", SPELLINGS)
def test_overwrite_refuses_a_checkpoint_or_input_inside_the_store_however_either_is_spelled(ray_address, runner, cli, made, video, tiny_model, tmp_path, how):
    out = copy_store(made, tmp_path)
    model = Path(shutil.copy(tiny_model, out / "tiny.pt"))
    clip = Path(shutil.copy(video, out / "clip.mp4"))
    for args in (
        args_of(video, out, spelled(model, how), "--overwrite"),  # the checkpoint spelled another way
        args_of(video, spelled(out, how), model, "--overwrite"),  # the store spelled another way
        args_of(spelled(clip, how), out, tiny_model, "--overwrite"),
    ):
        r = run(runner, cli, *args)
        assert r.exit_code == 2 and "--overwrite would delete" in one_line(r.output), (args, r.output)
    assert model.is_file() and clip.is_file() and (out / "zarr.json").is_file()


@pytest.mark.parametrize("how", SPELLINGS)
def test_export_refuses_the_source_and_checkpoint_however_the_run_or_the_export_spelled_them(ray_address, runner, cli, tiny_model, tmp_path, how):
    (tmp_path / "scene").mkdir()
    src = write_geotiff(tmp_path / "scene" / "src.tif", 64, 64)
    out = tmp_path / "scene.zarr"
    r = run(runner, cli, "--input", spelled(src, how), "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 64, "--overlap", 16)
    assert r.exit_code == 0, r.output
    before = src.read_bytes(), Path(tiny_model).read_bytes()
    for target in (src, spelled(src, how), spelled(Path(tiny_model), how)):
        r = invoke(runner, cli, "export", out, "--to", target, "--overwrite")
        assert r.exit_code == 2 and ("source" in one_line(r.output) or "checkpoint" in r.output), (target, r.output)
    assert (src.read_bytes(), Path(tiny_model).read_bytes()) == before


@pytest.mark.parametrize("how", SPELLINGS)
def test_an_audit_report_never_replaces_a_folder_holding_the_store(runner, cli, made, tmp_path, how):
    (tmp_path / "work").mkdir()
    out = copy_store(made, tmp_path / "work")
    r = invoke(runner, cli, "audit", spelled(out, how), "--report", tmp_path / "work", "--overwrite", "--quiet")
    assert r.exit_code == 2 and "inside the report folder" in one_line(r.output), r.output
    assert (out / "zarr.json").is_file()


def test_a_relative_input_reaches_workers_in_other_folders(ray_address, video, tiny_model, tmp_path):
    shutil.copy(video, tmp_path / "clip.mp4")
    cmd = [sys.executable, "-m", "segbatch", "run", "--input", "clip.mp4", "--out", "rel.zarr", "--model", tiny_model, "--samples", 1]
    r = subprocess.run([*map(str, cmd), "--address", ray_address, "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(tmp_path / "rel.zarr")).attrs["segbatch"]["source"]["path"] == str(tmp_path / "clip.mp4")


# 11-12. Tampered and inconsistent stores: one line, exit 2, wherever the store is read

TAMPERED = {
    "attribute is a string": lambda a: "complete",
    "attribute is a list": lambda a: [a],
    "source missing": lambda a: {k: v for k, v in a.items() if k != "source"},
    "source kind unknown": lambda a: {**a, "source": {**a["source"], "kind": "hologram"}},
    "samples a string": lambda a: {**a, "samples": "eight"},
    "seed a float": lambda a: {**a, "seed": 1.5},
    "unit_frames zero": lambda a: {**a, "unit_frames": 0},
    "unit_frames missing": lambda a: {k: v for k, v in a.items() if k != "unit_frames"},
    "status unknown": lambda a: {**a, "status": "done-ish"},
    "model not a mapping": lambda a: {**a, "model": "segnet"},
}


@pytest.mark.parametrize("spoil", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_attributes_are_one_line_exit_2_everywhere(ray_address, runner, cli, made, video, tiny_model, tmp_path, spoil):
    out = copy_store(made, tmp_path)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["segbatch"] = spoil(dict(root.attrs["segbatch"]))
    zarr.consolidate_metadata(str(out))
    for args in (("info", out), ("audit", out, "--report", tmp_path / "report"), ("export", out, "--to", tmp_path / "o.mp4"), ("verify", out)):
        r = invoke(runner, cli, *args)
        assert r.exit_code == 2, (args[0], r.output)
        assert "attribute" in one_line(r.output) or "altered" in r.output
    r = run(runner, cli, *args_of(video, out, tiny_model, "--resume"))
    assert r.exit_code == 2 and "altered" in one_line(r.output)


def test_a_non_json_ledger_entry_is_one_line_exit_2(runner, cli, made, tmp_path):
    out = copy_store(made, tmp_path)
    zarr.open_group(str(out), mode="r+")[LEDGER][1] = "{not json"
    r = invoke(runner, cli, "info", out)
    assert r.exit_code == 2 and "ledger entry 1 is not a JSON object" in one_line(r.output)


def test_a_complete_store_missing_a_unit_is_refused_then_redone(ray_address, runner, cli, made, video, tiny_model, tmp_path):
    out = copy_store(made, tmp_path)
    zarr.open_group(str(out), mode="r+")[LEDGER][1] = ""
    (out / "labels" / "c.1.0.0").unlink()
    for args in (("info", out), ("audit", out, "--report", tmp_path / "report"), ("export", out, "--to", tmp_path / "o.mp4")):
        r = invoke(runner, cli, *args)
        assert r.exit_code == 2 and "says complete but its ledger lacks 1 of 4 units (first: 1)" in one_line(r.output), (args[0], r.output)
    r = run(runner, cli, *args_of(video, out, tiny_model, "--resume"))
    assert r.exit_code == 0, r.output
    assert_same(arrays(out), made[1])
    assert invoke(runner, cli, "verify", out).exit_code == 0


# 13. Integrity you can check: segbatch verify, and the repair by --resume


def test_verify_finds_missing_and_altered_chunks_and_resume_repairs_them(ray_address, runner, cli, made, video, tiny_model, tmp_path):
    out = copy_store(made, tmp_path)
    r = invoke(runner, cli, "verify", out, "--json")
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["chunks_checked"] == 4 * 4 and report["unchecked_units"] == 0

    (out / "labels" / "c.1.0.0").unlink()  # unit 1's labels chunk deleted
    altered = out / "uncertainty" / "c.3.0.0"
    altered.write_bytes(altered.read_bytes()[:-5] + b"xxxxx")  # unit 3's uncertainty chunk no longer decodes
    entropy = zarr.open_group(str(out), mode="r+")["entropy"]
    entropy[0, 0, 0] = np.float16(7.0)  # unit 0's entropy chunk rewritten with one other value
    (out / "confidence" / "c.1.0.0").unlink()  # unit 1's confidence chunk deleted too (a float array: reads back NaN)
    r = invoke(runner, cli, "verify", out)
    assert r.exit_code == 1
    assert "unit 1: chunk labels/1.0.0 missing" in r.output
    assert "unit 3: chunk uncertainty/3.0.0 altered" in r.output
    assert "unit 0: chunk entropy/0.0.0 altered" in r.output
    assert "unit 1: chunk confidence/1.0.0 missing" in r.output
    assert "4 bad in 3 units" in r.output
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "damaged"
    r = invoke(runner, cli, "export", out, "--to", tmp_path / "o.mp4")
    assert r.exit_code == 2 and "verify" in one_line(r.output)

    r = run(runner, cli, *args_of(video, out, tiny_model, "--resume"))
    assert r.exit_code == 0, r.output
    assert "1 units already done" in r.output  # exactly the three bad units were redone
    assert invoke(runner, cli, "verify", out).exit_code == 0
    assert_same(arrays(out), made[1])
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "complete"


def test_verify_checks_stitched_raster_chunks_and_image_stores(ray_address, runner, cli, tiny_model, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", height=200, width=260)
    out = tmp_path / "scene.zarr"
    r = run(runner, cli, "--input", scene, "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 128, "--overlap", 16)
    assert r.exit_code == 0, r.output
    report = json.loads(invoke(runner, cli, "verify", out, "--json").stdout)
    assert report["ok"] and report["unchecked_units"] == 0 and report["chunks_checked"] == report["units"] * 4
    min((out / "labels").glob("c.*")).unlink()
    r = invoke(runner, cli, "verify", out)
    assert r.exit_code == 1 and "labels/" in r.output and "missing" in r.output


def test_marking_failed_that_fails_keeps_the_first_cause():
    from segbatch.engine.outcome import recorded_outcome
    from segbatch.errors import RunError

    class ReadOnlyAttrs(dict):
        def __setitem__(self, key, value):
            raise PermissionError(1, "Operation not permitted")

    class ReadOnlyRoot:
        attrs = ReadOnlyAttrs(segbatch={"status": "running"})

    with pytest.raises(RunError, match="^unit 3 .frames 24:32. failed: No space left on device$"):
        with recorded_outcome(ReadOnlyRoot(), 3, "units"):
            raise RunError("unit 3 (frames 24:32) failed: No space left on device")


# 15. Exit codes by the error's type, also from a worker that cannot start


def _worker_failing_with(error: BaseException) -> type:
    """A worker class (local, so Ray ships it by value) whose constructor raises `error`, as one that cannot read its checkpoint would."""

    class Failing:
        def __init__(self, job):
            raise error

        def device_name(self):
            return "cpu"

    return Failing


@pytest.mark.parametrize(
    ("error", "expected"),
    [("CheckpointError('/models/m.pt: no such checkpoint on this node')", "InputError"), ("MemoryError('cannot allocate')", "RunError")],
)
def test_a_worker_that_cannot_start_is_classified_by_its_errors_type(ray_address, error, expected):

    from segbatch import errors
    from segbatch.engine.pool import ActorPool

    worker = _worker_failing_with(eval(error, vars(errors)))
    with ActorPool(worker, "job", actors=1, cpus=1, gpus=0) as pool:
        pool.submit("a unit")
        with pytest.raises(getattr(errors, expected)) as caught:
            pool.get_next()
    assert type(caught.value) is getattr(errors, expected)
    assert str(caught.value).startswith("a worker could not start:")


# 9. Crash windows


class _Killed(BaseException):
    """The driver dying at a chosen point (not an error the run could catch and record)."""


def test_a_raster_driver_dying_before_tiles_are_removed_leaves_a_complete_store(ray_address, runner, cli, tiny_model, tmp_path, monkeypatch):
    scene = write_geotiff(tmp_path / "scene.tif", height=150, width=180)
    out = tmp_path / "scene.zarr"

    def die(group, key):
        raise _Killed(key)

    monkeypatch.setattr(zarr.Group, "__delitem__", die)
    with pytest.raises(_Killed):
        runner.invoke(cli, ["run", "--input", str(scene), "--out", str(out), "--model", str(tiny_model), "--samples", 1, "--tile", 96, "--overlap", 16])
    monkeypatch.undo()
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "complete"
    r = invoke(runner, cli, "export", out, "--to", tmp_path / "labels.tif")
    assert r.exit_code == 0, r.output
    assert invoke(runner, cli, "verify", out).exit_code == 0
