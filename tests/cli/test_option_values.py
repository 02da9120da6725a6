"""Option values are checked before any work: an empty path is a usage error, and a --config file's values are checked like flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.stores import invoke


def _one_error_line(output: str) -> str:
    """click's usage error: usage and hint lines, then exactly one `Error: ...` line."""
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--input", "", "--out", "o.zarr"),
        ("run", "--out", "", "--input", "in.mp4"),
        ("run", "--model", "", "--input", "in.mp4", "--out", "o.zarr"),
        ("audit", "", "--report", "report"),
        ("audit", "--report", "", "s.zarr"),
        ("audit", "--truth", "", "s.zarr", "--report", "report"),
        ("info", ""),
        ("stitch", ""),
        ("export", "", "--to", "x.tif"),
        ("model", "init", "--out", "", "--classes", "3"),
        ("train", "--out", "", "--images", "images", "--masks", "masks"),
        ("demo", "scenes", "--out", ""),
        ("demo", "video", "--out", ""),
    ],
    ids=lambda args: " ".join(a or "''" for a in args),
)
def test_an_empty_path_is_a_usage_error_not_the_current_folder(runner, cli, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = invoke(runner, cli, *args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    empty = [args[i - 1] for i, a in enumerate(args) if a == ""][0]
    option = f"'{empty}'" if empty.startswith("--") else "'STORE'" if args[0] != "info" else "'PATH'"
    assert "Invalid value for" in line and option in line and "empty" in line, line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("info", "nope.zarr"), "nope.zarr: no such store or checkpoint"),
        (("verify", "nope.zarr"), "nope.zarr: no such store"),
        (("stitch", "nope.zarr"), "nope.zarr: no such store"),
        (("export", "nope.zarr", "--to", "x.tif"), "nope.zarr: no such store"),
        (("audit", "nope.zarr", "--report", "r"), "nope.zarr: no such store"),
        (("model", "import", "--prototxt", "nope.prototxt", "--weights", "w.caffemodel", "--out", "m.pt"), "--prototxt nope.prototxt: no such file"),
        (("train", "--images", "nope", "--masks", "masks", "--out", "m.pt"), "--images nope: no such folder"),
        (("run", "--config", "nope.yaml"), "--config nope.yaml: no such file"),
        (("model", "init", "--classes", "3", "--out", "taken.pt"), "taken.pt exists; pass --overwrite to replace it"),
        (("demo", "video", "--out", "taken.pt"), "taken.pt exists; pass --overwrite to replace it"),
        (("train", "--images", "images", "--masks", "masks", "--out", "nofolder/m.pt"), "cannot write nofolder/m.pt: folder nofolder does not exist"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_a_missing_or_existing_file_is_one_line_without_usage_lines(runner, cli, tmp_path, monkeypatch, args, says):
    """Click's "Usage: ... Try --help" lines follow usage errors only: a missing store or an output in the way is no typing mistake."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "taken.pt").write_bytes(b"the user's file")
    result = invoke(runner, cli, *args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"Error: {says}"]
    assert (tmp_path / "taken.pt").read_bytes() == b"the user's file"


@pytest.mark.parametrize(
    ("frames", "says"),
    [("40:10", "'40:10': the start must be below the end"), ("10:10", "'10:10': the start must be below the end"), ("-3:10", "counted from 0")],
)
def test_a_frame_range_that_selects_nothing_says_why(runner, cli, tmp_path, frames, says):
    result = invoke(runner, cli, "run", "--input", tmp_path / "in.mp4", "--out", tmp_path / "o.zarr", "--frames", frames)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert "'--frames'" in line and says in line, line
    assert not (tmp_path / "o.zarr").exists()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Relative paths in the files below land in tmp_path, never in the repository (as they did before the checks)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "entry, words",
    [
        ("seed: 1.5", ["run.seed", "integer", "1.5"]),
        ("seed: true", ["run.seed", "integer", "True"]),
        ("samples: -1", ["run.samples", "-1"]),
        ("batch-size: 2.0", ["run.batch-size", "integer", "2.0"]),
        ("cpus-per-actor: yes", ["run.cpus-per-actor", "number", "True"]),
        ("input: null", ["run.input", "null"]),
        ("out: null", ["run.out", "null"]),
        ("seed: null", ["run.seed", "null"]),
        ("input: ''", ["run.input", "empty"]),
        ("input: [a.mp4, b.mp4]", ["run.input", "list"]),
        ("address: [a, b]", ["run.address", "list"]),
        ("model: {path: m.pt}", ["run.model", "mapping"]),
        ("precision: fp64", ["run.precision", "fp64"]),
        ("overwrite: 'no'", ["run.overwrite", "true or false"]),
        ("quiet: 1", ["run.quiet", "true or false"]),
        ("outputs: [probs, nonsense]", ["run.outputs", "nonsense"]),
        ("bands: [1, 2.5]", ["run.bands", "2.5"]),
        ("frames: 10:20", ["run.frames", "A:B", "quote"]),  # YAML 1.1 reads 10:20 as the number 620
    ],
)
@pytest.mark.usefixtures("in_tmp")
def test_config_values_are_checked_like_flags(runner, cli, tmp_path, entry, words):
    config = _config(tmp_path, f"run:\n  input: in.mp4\n  out: o.zarr\n  {entry}\n")
    result = invoke(runner, cli, "run", "--config", config)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert str(config) in line, line
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.usefixtures("in_tmp")
def test_config_audit_values_are_checked_like_flags(runner, cli, tmp_path):
    config = _config(tmp_path, "audit:\n  store: s.zarr\n  report: r\n  top: 2.5\n")
    line = _one_error_line(invoke(runner, cli, "audit", "--config", config).output)
    assert str(config) in line and "audit.top" in line and "2.5" in line
    config = _config(tmp_path, "audit:\n  store: null\n  report: r\n")
    result = invoke(runner, cli, "audit", "--config", config)
    assert result.exit_code == 2 and "audit.store" in _one_error_line(result.output)


@pytest.mark.usefixtures("in_tmp")
def test_config_null_for_an_option_without_default_means_unset(runner, cli, tmp_path):
    """`model: null` is the file saying "no checkpoint" (the default), not an error; the run then fails on the missing input."""
    config = _config(tmp_path, "run:\n  input: missing.mp4\n  out: o.zarr\n  model: null\n  actors: null\n")
    result = invoke(runner, cli, "run", "--config", config, "--quiet")
    assert result.exit_code == 2 and "missing.mp4: no such file" in result.output, result.output


def test_model_init_refuses_a_width_no_checkpoint_loader_accepts(runner, cli, tmp_path):
    from segbatch.model.catalog import MAX_WIDTH

    out = tmp_path / "wide.pt"
    result = invoke(runner, cli, "model", "init", "--classes", "3", "--width", "5", "--out", out)
    assert result.exit_code == 2 and "--width" in _one_error_line(result.output)
    assert not out.exists()
    result = invoke(runner, cli, "train", "--images", tmp_path, "--masks", tmp_path, "--width", "4.5", "--out", out)
    assert result.exit_code == 2 and "--width" in _one_error_line(result.output)
    assert MAX_WIDTH == 4.0


def test_width_limit_is_the_same_for_building_and_loading(tmp_path):
    from segbatch.errors import InputError
    from segbatch.model.segnet import build_model

    with pytest.raises(InputError, match="width"):
        build_model("segnet-basic", 3, width=4.5)
