"""A driver stopped from outside: SIGTERM and SIGHUP end it like Ctrl-C, also while Ray starts; three quick Ctrl-Cs are one;
a SIGKILLed one leaves no Ray process behind."""

import os
import re
import signal
import sys
import time

import pytest
import zarr

from tests.helpers.drivers import (
    descendants,
    finished_units,
    signal_delivered,
    signal_mid_run,
    start_driver,
    start_local_driver,
    still_alive,
    total_units,
    wait_for_units,
)
from tests.helpers.stores import arrays, assert_same, run
from tests.helpers.videos import write_video

LEFTOVER_DEADLINE_S = 45  # Ray's own agents linger about 65 s after their raylet is killed; the reaper ends them in seconds


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "stop.mp4", 96, gop=24)  # 12 units of 8 frames


@pytest.fixture(scope="module")
def clean(ray_address, runner_module, cli_module, video, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    r = run(runner_module, cli_module, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 2)
    assert r.exit_code == 0, r.output
    return arrays(out)


def _signal_mid_run(ray_address, video, tiny_model, out, signum):
    """Start a driver, send it `signum` once a unit is done (the driver held meanwhile: mid-run for sure); (exit code, stderr)."""
    proc = start_driver(ray_address, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1)
    signal_mid_run(out, proc, signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _assert_one_resumable_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no traceback, no "*** SIGTERM received" stack dump from Ray's C++ core
    assert "interrupted with" in lines[0] and "finish with the same command and --resume" in lines[0], err


def test_sigterm_stops_like_ctrl_c_exit_143_and_resume_finishes(ray_address, runner, cli, video, tiny_model, tmp_path, clean):
    out = tmp_path / "terminated.zarr"
    code, err = _signal_mid_run(ray_address, video, tiny_model, out, signal.SIGTERM)
    assert code == 143, err
    _assert_one_resumable_line(err)
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "running"  # as Ctrl-C leaves it
    r = run(runner, cli, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--resume")
    assert r.exit_code == 0, r.output
    assert_same(arrays(out), clean)
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "complete"


def test_sighup_stops_like_ctrl_c_exit_129(ray_address, video, tiny_model, tmp_path):
    out = tmp_path / "hungup.zarr"
    code, err = _signal_mid_run(ray_address, video, tiny_model, out, signal.SIGHUP)
    assert code == 129, err
    _assert_one_resumable_line(err)
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "running"


@pytest.mark.slow  # a driver of its own, which starts a Ray runtime of its own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows the process tree in /proc")
def test_a_killed_driver_leaves_no_ray_process_behind(video, tiny_model, tmp_path):
    out = tmp_path / "orphaned.zarr"
    proc = start_local_driver("--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1)
    wait_for_units(out, proc, timeout=300)
    tree = descendants(proc.pid)  # the local Ray runtime it started: gcs_server, raylet, agents, workers (and its reaper)
    assert proc.poll() is None and 1 <= finished_units(out) < total_units(out), "the kill would not land mid-run"
    names = " ".join(still_alive(tree).values())
    assert "raylet" in names and "gcs_server" in names and "ray::" in names, names
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + LEFTOVER_DEADLINE_S
    while still_alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not still_alive(tree), f"left behind {LEFTOVER_DEADLINE_S} s after the driver's SIGKILL: {still_alive(tree)}"


# ray.init returns, Ray is up, and the driver is held before segbatch sees it return: a stop lands "while Ray starts"
# (where Ray's own SIGTERM handler, set by ray.init in the main thread, used to exit 15)
HELD_RAY_INIT = """
import pathlib, time, ray
_init = ray.init
def _held_init(*args, **kwargs):
    context = _init(*args, **kwargs)
    pathlib.Path({started!r}).touch()
    while not pathlib.Path({go!r}).exists():
        time.sleep(0.01)
    return context
ray.init = _held_init
"""


@pytest.mark.slow  # a driver of its own, which starts a Ray runtime of its own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows the process tree in /proc")
def test_sigterm_while_ray_starts_exits_143_in_one_line_and_leaves_no_ray_process(video, tiny_model, tmp_path):
    started, go, out = tmp_path / "ray-started", tmp_path / "go", tmp_path / "starting.zarr"
    prelude = HELD_RAY_INIT.format(started=str(started), go=str(go))
    proc = start_local_driver("--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1, prelude=prelude)
    try:
        while not started.exists() and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1]
        tree = descendants(proc.pid)
        assert "gcs_server" in " ".join(still_alive(tree).values())
        proc.send_signal(signal.SIGTERM)
        while not signal_delivered(proc.pid, signal.SIGTERM):
            time.sleep(0.01)
    finally:
        go.touch()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err  # no traceback, no stack dump from Ray's core
    deadline = time.monotonic() + LEFTOVER_DEADLINE_S
    while still_alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not still_alive(tree), f"left behind by a run stopped while Ray started: {still_alive(tree)}"


@pytest.mark.slow  # a driver of its own, which starts a Ray runtime of its own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows the process tree in /proc")
def test_three_quick_ctrl_cs_exit_130_with_the_units_left_line(video, tiny_model, tmp_path):
    out = tmp_path / "ctrl-c.zarr"
    proc = start_local_driver("--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1, new_session=True)
    wait_for_units(out, proc, timeout=300)
    assert proc.poll() is None and 1 <= finished_units(out) < total_units(out), "the first Ctrl-C would not land mid-run"
    tree = still_alive(descendants(proc.pid))
    workers = {pid: start for pid, start in descendants(proc.pid).items() if "PipelineWorker" in tree.get(pid, "")}
    gcs = {pid: start for pid, start in descendants(proc.pid).items() if "gcs_server" in tree.get(pid, "")}
    assert workers and gcs, tree
    # each Ctrl-C at a known point of the run's end: mid-run; once its workers are gone (the pool closed, the ledger being
    # counted for the closing line); once its GCS is gone (Ray shut down, the reaper and the lease being let go)
    for reached in (lambda: True, lambda: not still_alive(workers), lambda: not still_alive(gcs)):
        deadline = time.monotonic() + 120
        while not reached() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
        while not signal_delivered(proc.pid, signal.SIGINT):
            time.sleep(0.001)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err  # not 139 (a segfault in Ray's shutdown)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no "Exception ignored in atexit callback" traceback
    assert re.fullmatch(r"Error: interrupted with \d+ of 12 units left; finish with the same command and --resume", lines[0]), err
