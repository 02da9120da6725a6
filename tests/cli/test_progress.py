"""What `segbatch run` says while it works: `--progress json` lines, `-v` unit lines and stage times, `-vv` Ray's logs.

Also shell completion (README: "Shell completion"), which click generates from the same command tree.
"""

import io
import json
import os
import subprocess
import sys

import pytest

from segbatch.progress import RunProgress, StartUp, note, phase
from tests.helpers.videos import write_video


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_progress_json_and_verbose_lines_through_the_cli(ray_address, runner, cli, tiny_model, tmp_path):
    video = write_video(tmp_path / "drive.mp4", 40, gop=8)
    out = tmp_path / "labels.zarr"
    args = ["run", "--input", video, "--out", out, "--model", tiny_model, "--samples", 1, "--actors", 2, "--progress", "json", "-v"]
    r = runner.invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # stdout stays clean for data: everything goes to stderr

    events = [e for e in _json_lines(r.stderr) if e["event"] != "phase"]  # start-up's phases: test_start_up_is_never_silent
    start, units = events[0], events[1:]
    assert start["event"] == "start" and start["done"] == 0 and start["items"] == 0 and start["items_total"] == 40 and start["noun"] == "frame"
    total = start["total"]
    assert total > 1 and len(units) == total
    assert all(e["event"] == "unit" and e["total"] == total and e["items_total"] == 40 for e in units)
    assert [e["done"] for e in units] == list(range(1, total + 1))  # one line per finished unit, done rising to total
    assert [e["items"] for e in units] == sorted(e["items"] for e in units) and units[-1]["items"] == 40
    assert sorted(e["unit"] for e in units) == list(range(total))
    assert all(e["rate"] > 0 and e["seconds"] > 0 for e in units)
    assert units[-1]["eta"] == 0 and all(e["eta"] is not None and e["eta"] >= 0 for e in units)

    text = [line for line in r.stderr.splitlines() if not line.startswith("{")]
    assert text[:2] == [f"planning {video}", "starting Ray"] and text[2:6:3] == ["starting 2 actors", "first unit running on cpu"]  # -v: a line a phase
    assert text[3].startswith("segmenting 40 frames in")
    unit_lines = [line for line in text if line.startswith("unit ")]
    assert len(unit_lines) == total
    assert all("frames in" in line and "model" in line and f"/{total} units" in line for line in unit_lines)
    (stages,) = [line for line in text if line.startswith("stage seconds over")]
    assert f"over {total} units" in stages and "bottleneck: " in stages
    assert text[-1].startswith("segmented 40 frames")


PHASES = ["plan", "ray", "actors", "model", "first_unit"]


def test_start_up_is_never_silent_and_the_demo_notice_follows_the_input_check(ray_address, runner, cli, tmp_path):
    """Between the command and the first finished unit, `--progress json` says each phase as it begins; the demo model's notice
    comes once the input was read (a run whose input is missing says that alone)."""
    video = write_video(tmp_path / "drive.mp4", 16, gop=8)
    out = tmp_path / "labels.zarr"
    r = runner.invoke(cli, ["run", "--input", str(video), "--out", str(out), "--samples", "1", "--actors", "2", "--progress", "json"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    events = [json.loads(line) if line.startswith("{") else {"event": "text", "line": line} for line in lines]
    phases = [e for e in events if e["event"] == "phase"]
    assert [e["phase"] for e in phases] == PHASES
    said = {e["phase"]: e["message"] for e in phases}
    assert said["plan"] == f"planning {video}" and said["ray"] == "starting Ray" and said["actors"] == "starting 2 actors"
    assert said["model"] == "loading the model" and said["first_unit"] == "first unit running on cpu"
    assert [e["elapsed"] for e in phases] == sorted(e["elapsed"] for e in phases)
    order = [e["phase"] if e["event"] == "phase" else e["event"] for e in events]
    assert order.index("first_unit") < order.index("unit")  # every phase is said before the first unit finishes
    notice = next(i for i, e in enumerate(events) if e["event"] == "text" and "built-in demo model" in e["line"])
    assert order.index("plan") < notice < order.index("ray")  # after the input was read, before Ray starts

    r = runner.invoke(cli, ["run", "--input", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "x.zarr"), "--progress", "json"])
    assert r.exit_code == 2
    text = [line for line in r.stderr.splitlines() if not line.startswith("{")]
    assert text == [f"Error: {tmp_path / 'missing.mp4'}: no such file"]  # no demo-model notice before the input is known to be there


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_start_up_phases_show_on_the_progress_line_at_a_terminal(monkeypatch, quiet):
    """One line rewritten phase by phase; the bar takes it over and says the phase until the first unit is done; nothing with --quiet."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with StartUp(quiet=quiet):
        phase("plan", "planning drive.mp4")
        note("note: a notice", quiet)
        phase("ray", "starting Ray")
        phase("actors", "starting 2 actors")
        with RunProgress(units=2, items=16, noun="frame", size=lambda unit: 8, quiet=quiet) as progress:
            described = (lambda: progress.bar.desc) if not quiet else (lambda: None)  # a disabled bar has no description
            assert described() in ("starting 2 actors", None)
            phase("model", "loading the model")
            phase("first_unit", "first unit running on cpu")
            assert described() in ("first unit running on cpu", None)
            progress.unit_done(0)
            assert described() in ("segmenting", None)
            phase("late", "said after start-up")  # start-up is over: nothing more
            progress.unit_done(1)
        phase("late", "said after start-up")
    shown = sys.stderr.getvalue()
    if quiet:
        assert shown == ""
        return
    said = ["planning drive.mp4", "note: a notice\n", "starting Ray", "starting 2 actors", "loading the model", "first unit running on cpu", "segmenting"]
    where = [shown.find(text) for text in said]
    assert -1 not in where and where == sorted(where), shown
    assert "\rnote: a notice\n" in shown  # the notice starts at the line's beginning and ends it: the phase is drawn again after it
    assert "said after start-up" not in shown
    assert "16/16" in shown


def _on_a_terminal(*args: object) -> tuple[int, str]:
    """`segbatch ARGS` with stderr on a pseudo-terminal 100 columns wide (stdout to nothing): its exit code, what the terminal got."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "segbatch", *map(str, args)], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    got = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        got += chunk
    os.close(leader)
    return proc.wait(timeout=120), got.decode(errors="replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal as Linux sizes it")
def test_the_cli_draws_start_up_on_the_progress_line_at_a_terminal(ray_address, tiny_model, tmp_path):
    video = write_video(tmp_path / "drive.mp4", 16, gop=8)
    code, shown = _on_a_terminal(
        "run", "--input", video, "--out", tmp_path / "o.zarr", "--model", tiny_model, "--samples", 1, "--actors", 1, "--address", ray_address
    )
    assert code == 0, shown
    said = [f"\rplanning {video}", f"\rjoining the Ray cluster at {ray_address}", "\rstarting 1 actor", "\rloading the model", "\rfirst unit running on cpu"]
    where = [shown.find(text) for text in said]
    assert -1 not in where and where == sorted(where), shown
    assert "segmenting: 100%" in shown and "segmented 16 frames" in shown


def test_progress_json_of_a_resumed_run_counts_the_units_done_before(capsys):
    from segbatch.engine.raster import TileUnit

    with RunProgress(units=4, items=40, done_units=2, done_items=20, noun="frame", size=lambda unit: 10, mode="json") as progress:
        progress.unit_done(TileUnit(2), {"seconds": 0.5, "stages": {"read": 0.1, "model": 0.3, "write": 0.1, "wait": 0.0}})
        progress.unit_done(TileUnit(3), None)  # a worker that returned no entry: still counted
    events = _json_lines(capsys.readouterr().err)
    assert [(e["event"], e["done"], e["total"], e["items"]) for e in events] == [("start", 2, 4, 20), ("unit", 3, 4, 30), ("unit", 4, 4, 40)]
    assert events[1]["unit"] == 2 and events[1]["seconds"] == 0.5 and events[2]["seconds"] is None
    assert events[0]["eta"] is None and events[-1]["eta"] == 0


def test_progress_json_names_a_job_units_input_and_its_ledger_row(capsys):
    from segbatch.engine.raster import TileUnit
    from segbatch.engine.runjob import RunUnit
    from segbatch.engine.video import FrameUnit

    units = [RunUnit("day1--a", FrameUnit(3, 24, 32), 8, job=None), RunUnit("c", TileUnit(5), 1, job=None)]
    with RunProgress(units=2, items=9, noun="frame", size=lambda u: u.size, mode="json") as progress:
        for unit in units:
            progress.unit_done(unit, {"seconds": 0.1})
    events = [e for e in _json_lines(capsys.readouterr().err) if e["event"] == "unit"]
    assert [(e["group"], e["unit"]) for e in events] == [("day1--a", 3), ("c", 5)]


def test_verbose_names_the_bottleneck_and_quiet_hides_the_bar_only(capsys):
    with RunProgress(units=2, items=2, noun="tile", describe=lambda t: f"tile {t}", quiet=True, verbose=1) as progress:
        for tile in range(2):
            progress.unit_done(tile, {"seconds": 1.0, "stages": {"read": 0.2, "model": 0.1, "write": 0.6, "wait": 2.0}})
    err = capsys.readouterr().err.splitlines()
    assert err[1].startswith("tile 0: 1 tile in 1.00 s (read 0.20, model 0.10, write 0.60, wait 2.00) [1/2 units")
    assert err[-1] == "stage seconds over 2 units (all workers): read 0.4, model 0.2, write 1.2, wait 4.0; bottleneck: write"  # waits are idle time


def test_quiet_and_verbose_exclude_each_other(runner, cli, tmp_path):
    r = runner.invoke(cli, ["run", "--input", str(tmp_path), "--out", str(tmp_path / "x.zarr"), "--quiet", "-v"])
    assert r.exit_code == 2 and "--quiet and --verbose exclude each other" in r.stderr
    r = runner.invoke(cli, ["run", "--input", str(tmp_path), "--out", str(tmp_path / "x.zarr"), "--progress", "xml"])
    assert r.exit_code == 2 and "'xml' is not one of 'bar', 'json'" in r.stderr


@pytest.mark.parametrize(("verbose", "to_driver", "level"), [(0, False, "ERROR"), (1, False, "ERROR"), (2, True, "INFO")])
def test_ray_logs_reach_stderr_from_vv(monkeypatch, verbose, to_driver, level):
    import logging

    import ray

    from segbatch.engine.session import ensure_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert ensure_ray(None, verbose) is True
    (kwargs,) = calls
    assert kwargs["log_to_driver"] is to_driver and kwargs["logging_level"] == getattr(logging, level)


def _segbatch(env, *args):
    """`segbatch` as a shell runs it (the console script's name decides the completion variable, _SEGBATCH_COMPLETE)."""
    code = "import sys; from segbatch.cli.main import main; sys.argv = ['segbatch', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("shell", "marker"), [("bash", "complete -o nosort -F _segbatch_completion segbatch"), ("zsh", "#compdef segbatch"), ("fish", "complete")]
)
def test_shell_completion_scripts_are_generated(shell, marker):
    r = _segbatch({"_SEGBATCH_COMPLETE": f"{shell}_source"})
    assert r.returncode == 0, r.stderr
    assert "_segbatch_completion" in r.stdout and marker in r.stdout


def test_bash_completion_completes_commands_and_options():
    r = _segbatch({"_SEGBATCH_COMPLETE": "bash_complete", "COMP_WORDS": "segbatch ru", "COMP_CWORD": "1"})
    assert r.returncode == 0 and r.stdout.split() == ["plain,run"]
    r = _segbatch({"_SEGBATCH_COMPLETE": "bash_complete", "COMP_WORDS": "segbatch run --prog", "COMP_CWORD": "2"})
    assert r.stdout.split() == ["plain,--progress"]
    r = _segbatch({"_SEGBATCH_COMPLETE": "bash_complete", "COMP_WORDS": "segbatch run --progress ", "COMP_CWORD": "3"})
    assert r.stdout.split() == ["plain,bar", "plain,json"]
