"""A driver stopped from outside: SIGTERM and SIGHUP end it like Ctrl-C; a SIGKILLed one leaves no Ray process behind."""

import os
import signal
import sys
import time

import pytest
import zarr

from tests.helpers.drivers import descendants, finished_units, start_driver, start_local_driver, still_alive, total_units, wait_for_units
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
    """Start a driver, send it `signum` once a unit is done; (exit code, stderr)."""
    proc = start_driver(ray_address, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1)
    wait_for_units(out, proc)
    assert proc.poll() is None and 1 <= finished_units(out) < total_units(out), "the signal would not land mid-run"
    proc.send_signal(signum)
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
