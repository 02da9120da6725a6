"""What `segbatch run` says while it works: `--progress json` lines, `-v` unit lines and stage times, `-vv` Ray's logs.

Also shell completion (README: "Shell completion"), which click generates from the same command tree.
"""

import json
import os
import subprocess
import sys

import pytest

from segbatch.progress import RunProgress
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

    events = _json_lines(r.stderr)
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
    assert text[0].startswith("segmenting 40 frames in")
    unit_lines = [line for line in text if line.startswith("unit ")]
    assert len(unit_lines) == total
    assert all("frames in" in line and "model" in line and f"/{total} units" in line for line in unit_lines)
    (stages,) = [line for line in text if line.startswith("stage seconds over")]
    assert f"over {total} units" in stages and "bottleneck: " in stages
    assert text[-1].startswith("segmented 40 frames")


def test_progress_json_of_a_resumed_run_counts_the_units_done_before(capsys):
    with RunProgress(units=4, items=40, done_units=2, done_items=20, noun="frame", size=lambda unit: 10, mode="json") as progress:
        progress.unit_done(2, {"seconds": 0.5, "stages": {"read": 0.1, "model": 0.3, "write": 0.1, "wait": 0.0}})
        progress.unit_done(3, None)  # a worker that returned no entry: still counted
    events = _json_lines(capsys.readouterr().err)
    assert [(e["event"], e["done"], e["total"], e["items"]) for e in events] == [("start", 2, 4, 20), ("unit", 3, 4, 30), ("unit", 4, 4, 40)]
    assert events[1]["unit"] == 2 and events[1]["seconds"] == 0.5 and events[2]["seconds"] is None
    assert events[0]["eta"] is None and events[-1]["eta"] == 0


def test_progress_json_names_a_job_units_input_and_its_ledger_row(capsys):
    from segbatch.engine.many import GroupUnit
    from segbatch.engine.video import FrameUnit

    units = [GroupUnit("day1--a", FrameUnit(3, 24, 32), 8, job=None), GroupUnit("c", 5, 1, job=None)]
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
