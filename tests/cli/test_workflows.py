"""workflows/: every file parses, every workflow config runs on a small input, every manifest's command exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
import yaml

from segbatch.cli.main import cli as root_cli
from tests.helpers.stores import invoke

WORKFLOWS = Path(__file__).parents[2] / "workflows"
CONFIGS = sorted(WORKFLOWS.glob("*.yaml"))
MANIFESTS = sorted((WORKFLOWS / "cluster").glob("*.yaml"))


def test_there_is_a_workflow_per_use_and_every_file_parses():
    assert {p.stem for p in CONFIGS} == {"dashcam-video", "geotiff-mosaic", "dataset-audit"}
    assert {p.stem for p in MANIFESTS} == {"aws-gpu", "rayjob"}
    for path in CONFIGS + MANIFESTS:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def _segbatch_commands(text: str) -> list[list[str]]:
    """Every `segbatch ...` command line in a manifest, in YAML or in its comments (folded lines and shell continuations joined)."""
    lines = [re.sub(r"^\s*#?\s*", "", line) for line in text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    pattern = r"segbatch (?:run|audit|export|info|stitch) [^\n#`]*(?:\n--[^\n#]*)*"
    return [shlex.split(m.group(0).replace("\n", " "))[1:] for m in re.finditer(pattern, joined)]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_commands_exist_with_their_options(manifest):
    commands = _segbatch_commands(manifest.read_text())
    assert commands, f"{manifest.name} runs no segbatch command"
    for args in commands:
        command = root_cli.get_command(click.Context(root_cli), args[0])
        assert command is not None, args
        ctx = click.Context(command)
        parser = command.make_parser(ctx)
        opts, _, _ = parser.parse_args(list(args[1:]))  # raises NoSuchOption for an option the command lacks
        if "config" in opts:
            config = Path(opts["config"])
            assert (WORKFLOWS / config.name).is_file(), f"{args}: {config.name} is not in workflows/"


def test_unknown_key_is_an_error_that_names_it(runner, cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  input: x.mp4\n  out: y.zarr\n  sampels: 4\n")
    result = invoke(runner, cli, "run", "--config", bad)
    assert result.exit_code == 2 and "unknown key run.sampels" in result.output
    bad.write_text("runn:\n  input: x.mp4\n")
    result = invoke(runner, cli, "run", "--config", bad)
    assert result.exit_code == 2 and "unknown section 'runn'" in result.output


def test_dashcam_workflow_runs_and_flags_override_the_file(runner, cli, ray_address, tiny_model, tmp_path):
    from segbatch.demo.video import write_demo_video
    from segbatch.store import open_store, store_attrs

    video = write_demo_video(tmp_path / "drive.mp4", 12, 48, 64)
    store = tmp_path / "drive.zarr"
    args = ("run", "--config", WORKFLOWS / "dashcam-video.yaml", "--input", video, "--out", store, "--model", tiny_model)
    result = invoke(runner, cli, *args, "--samples", "2", "--address", ray_address, "--quiet")
    assert result.exit_code == 0, result.output
    root = open_store(store)
    attrs = store_attrs(root)
    assert attrs["samples"] == 2  # the command line beats the file's 8
    assert attrs["config"]["batch_size"] == 8 and "mutual_information" in root  # from the file


def test_geotiff_workflow_runs(runner, cli, ray_address, tiny_model, tmp_path):
    from tests.helpers.rasters import write_geotiff

    raster = write_geotiff(tmp_path / "scene.tif", height=80, width=96)
    store = tmp_path / "scene.zarr"
    config = WORKFLOWS / "geotiff-mosaic.yaml"
    result = invoke(
        runner, cli, "run", "--config", config, "--input", raster, "--out", store, "--model", tiny_model, "--samples", "1", "--address", ray_address
    )
    assert result.exit_code == 0, result.output
    from segbatch.store import open_store, store_attrs

    source = store_attrs(open_store(store))["source"]
    assert (source["tile"], source["overlap"], source["bands"]) == (512, 64, [1, 2, 3])


def test_dataset_audit_workflow_runs_both_steps(runner, cli, ray_address, tiny_model, tmp_path):
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(images / f"{k}.png")
        Image.fromarray(rng.integers(0, 11, (40, 56), np.uint8)).save(masks / f"{k}.png")
    store, report = tmp_path / "ds.zarr", tmp_path / "audit"
    config = WORKFLOWS / "dataset-audit.yaml"
    result = invoke(
        runner, cli, "run", "--config", config, "--input", images, "--out", store, "--model", tiny_model, "--samples", "2", "--address", ray_address
    )
    assert result.exit_code == 0, result.output
    result = invoke(runner, cli, "audit", "--config", config, store, "--report", report, "--truth", masks, "--quiet")
    assert result.exit_code == 0, result.output
    assert (report / "index.html").is_file() and (report / "summary.json").is_file()
