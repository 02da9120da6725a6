"""Many inputs, one job (issue 13): one store with a group per input, one pool, through the real CLI.

Each group must be exactly the store a run of that input alone gives (same
arrays, bit for bit, same attributes); a bad input fails alone; a killed
job is finished by --resume, bit for bit; a changed list of inputs is
refused unless --add-inputs; info, verify and export work per group and for
the whole job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from segbatch.store import LEDGER
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke, run
from tests.helpers.videos import write_empty_video, write_video

CLIPS = {"day1/a.mp4": 16, "day1/b.mp4": 8, "c.mp4": 24}
NAMES = {"day1/a.mp4": "day1--a", "day1/b.mp4": "day1--b", "c.mp4": "c"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips") / "drives"
    for rel, frames in CLIPS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, frames, gop=8)
    return root


def settings(model, *extra):
    return ("--model", model, "--samples", 2, "--actors", 1, *extra)


@pytest.fixture(scope="module")
def job(ray_address, runner_module, cli_module, clips, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "job.zarr"
    r = run(runner_module, cli_module, "--input", clips, "--out", out, *settings(tiny_model))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def singles(ray_address, runner_module, cli_module, clips, tiny_model, tmp_path_factory):
    """Each clip run alone with the same settings: what its group must hold."""
    folder = tmp_path_factory.mktemp("singles")
    out = {}
    for rel in CLIPS:
        store = folder / f"{NAMES[rel]}.zarr"
        r = run(runner_module, cli_module, "--input", clips / rel, "--out", store, *settings(tiny_model))
        assert r.exit_code == 0, r.output
        out[NAMES[rel]] = store
    return out


def group(store: Path, name: str) -> Path:
    return store / name


def test_each_group_is_the_store_a_run_of_that_input_alone_gives(job, singles):
    root = zarr.open_group(str(job), mode="r")
    attrs = root.attrs["segbatch"]
    assert attrs["kind"] == "job" and attrs["status"] == "complete" and attrs["input_kind"] == "video"
    assert [i["name"] for i in attrs["inputs"]] == ["c", "day1--a", "day1--b"]
    assert {i["status"] for i in attrs["inputs"]} == {"complete"}
    for name, single in singles.items():
        assert_same(arrays(group(job, name)), arrays(single))
        mine, theirs = zarr.open_group(str(group(job, name)), mode="r").attrs["segbatch"], zarr.open_group(str(single), mode="r").attrs["segbatch"]
        assert mine["source"] == theirs["source"] and mine["config"] == theirs["config"] and mine["unit_frames"] == theirs["unit_frames"]
        # xarray reads a group as it reads the single store: same variables, coordinates, attributes
        a = xr.open_zarr(job, group=name, consolidated=False)
        b = xr.open_zarr(single)
        assert set(a.data_vars) == set(b.data_vars) and set(a.coords) == set(b.coords)
        np.testing.assert_array_equal(a["time"].values, b["time"].values)
        assert a["labels"].attrs == b["labels"].attrs
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_info_summarises_the_job_and_one_input(runner, cli, job):
    text = invoke(runner, cli, "info", job).output
    assert "complete: 3 of 3 video inputs complete, 0 failed, 0 to do" in text
    assert all(name in text for name in NAMES.values())
    summary = json.loads(invoke(runner, cli, "info", job, "--json").output)
    assert summary["counts"] == {"pending": 0, "complete": 3, "failed": 0}
    assert summary["items"] == sum(CLIPS.values())
    one = json.loads(invoke(runner, cli, "info", job, "--group", "day1--a", "--json").output)
    assert one["source"]["frames"] == 16 and one["status"] == "complete"
    r = runner.invoke(cli, ["info", str(job), "--group", "nope"])
    assert r.exit_code == 2 and "no input named 'nope'" in r.output and "day1--a" in r.output


def test_a_glob_and_a_manifest_name_the_same_inputs_and_give_the_same_bits(runner, cli, clips, tiny_model, job, tmp_path, monkeypatch):
    monkeypatch.chdir(clips.parent)
    r = run(runner, cli, "--input", f"{clips.name}/**/*.mp4", "--out", tmp_path / "glob.zarr", *settings(tiny_model))
    assert r.exit_code == 0, r.output
    names = [i["name"] for i in zarr.open_group(str(tmp_path / "glob.zarr"), mode="r").attrs["segbatch"]["inputs"]]
    assert names == ["c", "day1--a", "day1--b"]
    manifest = tmp_path / "inputs.txt"
    manifest.write_text(f"# two of the clips\n{clips / 'day1' / 'b.mp4'}\n\n{os.path.relpath(clips / 'c.mp4', tmp_path)}  # relative to the manifest\n")
    r = run(runner, cli, "--input", f"@{manifest}", "--out", tmp_path / "list.zarr", *settings(tiny_model))
    assert r.exit_code == 0, r.output
    listed = zarr.open_group(str(tmp_path / "list.zarr"), mode="r").attrs["segbatch"]["inputs"]
    assert sorted(Path(i["path"]).name for i in listed) == ["b.mp4", "c.mp4"]
    for entry in listed:
        original = {"b.mp4": "day1--b", "c.mp4": "c"}[Path(entry["path"]).name]
        assert_same(arrays(tmp_path / "list.zarr" / entry["name"]), arrays(group(job, original)))


def test_rasters_from_a_stac_item_collection_each_match_a_single_run(ray_address, runner, cli, tiny_model, tmp_path):
    import pystac

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    items = []
    for i, (h, w) in enumerate([(70, 90), (64, 50)]):
        write_geotiff(scenes / f"s{i}.tif", height=h, width=w, seed=i)
        item = pystac.Item(f"scene-{i}", None, None, pystac.utils.str_to_datetime("2026-01-01T00:00:00Z"), {})
        item.add_asset("image", pystac.Asset(f"./scenes/s{i}.tif", media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    raster = ("--tile", 64, "--overlap", 16)
    r = run(runner, cli, "--input", collection, "--asset", "image", "--out", tmp_path / "scenes.zarr", *settings(tiny_model, *raster))
    assert r.exit_code == 0, r.output
    for i in range(2):
        single = tmp_path / f"s{i}.zarr"
        assert run(runner, cli, "--input", scenes / f"s{i}.tif", "--out", single, *settings(tiny_model, *raster)).exit_code == 0
        assert_same(arrays(tmp_path / "scenes.zarr" / f"scene-{i}"), arrays(single))
        assert "tiles" not in zarr.open_group(str(tmp_path / "scenes.zarr" / f"scene-{i}"), mode="r")  # stitched, tiles removed
    r = run(runner, cli, "--input", collection, "--out", tmp_path / "no-asset.zarr", *settings(tiny_model))
    assert r.exit_code == 2 and "--asset" in r.output and "image" in r.output


def test_a_group_with_kept_tiles_is_stitched_again_under_the_jobs_lease(ray_address, runner, cli, tiny_model, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_geotiff(scenes / "a.tif", height=70, width=90)
    write_geotiff(scenes / "b.tif", height=50, width=60, seed=1)
    out = tmp_path / "job.zarr"
    r = run(runner, cli, "--input", scenes / "*.tif", "--out", out, *settings(tiny_model, "--tile", 64, "--overlap", 16, "--keep-tiles"))
    assert r.exit_code == 0, r.output
    before = arrays(out / "a")
    zarr.open_group(str(out / "a"), mode="r+")["labels"][...] = 0  # spoiled: the stitch must rebuild it from the kept tiles
    r = runner.invoke(cli, ["stitch", str(out)])
    assert r.exit_code == 2 and "--group NAME" in r.output
    r = runner.invoke(cli, ["stitch", str(out), "--group", "a", "--quiet"])
    assert r.exit_code == 0, r.output
    assert_same(arrays(out / "a"), before)
    assert not (out / "a" / "lease").exists() and (out / "lease").exists()  # the job's one lease, at its root


def test_a_bad_input_fails_alone_and_the_job_says_how_many(ray_address, runner, cli, clips, tiny_model, tmp_path):
    empty = write_empty_video(tmp_path / "empty.mp4")
    manifest = tmp_path / "inputs.txt"
    manifest.write_text(f"{clips / 'day1' / 'b.mp4'}\n{tmp_path / 'missing.mp4'}\n{empty}\n")
    out = tmp_path / "job.zarr"
    r = runner.invoke(cli, ["run", "--input", f"@{manifest}", "--out", str(out), *map(str, settings(tiny_model))])
    assert r.exit_code == 2, r.output
    assert "2 of 3 inputs failed" in r.output and "segmented 8 frames of 1 of 3 inputs" in r.output
    assert "missing.mp4) failed: " in r.output and "empty.mp4) failed: " in r.output  # each failed input named at run time
    attrs = zarr.open_group(str(out), mode="r").attrs["segbatch"]
    status = {Path(i["path"]).name: i for i in attrs["inputs"]}
    assert status["b.mp4"]["status"] == "complete" and status["missing.mp4"]["status"] == "failed" and status["empty.mp4"]["status"] == "failed"
    assert "no such file" in status["missing.mp4"]["error"]
    assert attrs["status"] == "complete"
    text = invoke(runner, cli, "info", out).output
    assert "1 of 3 video inputs complete, 2 failed" in text and "no such file" in text
    assert arrays(out / status["b.mp4"]["name"])["labels"].shape[0] == 8
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "ex" / "{name}.mp4")])
    assert r.exit_code == 0 and "2 of 3 inputs have no complete results" in r.output
    assert [p.name for p in (tmp_path / "ex").iterdir()] == [f"{status['b.mp4']['name']}.mp4"]


def test_a_job_whose_inputs_all_failed_has_nothing_to_export(ray_address, runner, cli, tiny_model, tmp_path):
    manifest = tmp_path / "inputs.txt"
    manifest.write_text(f"{tmp_path / 'gone.mp4'}\n")
    out = tmp_path / "job.zarr"
    r = runner.invoke(cli, ["run", "--input", f"@{manifest}", "--out", str(out), *map(str, settings(tiny_model)), "--quiet"])
    assert r.exit_code == 2 and "1 of 1 inputs failed" in r.output
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "{name}.mp4")])
    assert r.exit_code == 2 and "no input of" in r.output and len(r.output.strip().splitlines()) == 1


def _ledgers(store: Path) -> int:
    """Units finished so far over every group of a job store."""
    done = 0
    for name in ("a", "b", "c", "d"):
        try:
            done += int((zarr.open_group(str(store / name), mode="r")[LEDGER][...] != "").sum())
        except Exception:  # noqa: S112  (not created yet)
            continue
    return done


def test_a_killed_job_is_finished_by_resume_bit_for_bit(ray_address, runner, cli, tiny_model, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a", "b", "c", "d"):
        write_video(folder / f"{name}.mp4", 48, gop=8)
    args = ("--input", folder, "--model", tiny_model, "--samples", 2, "--actors", 1)
    clean = tmp_path / "clean.zarr"
    assert run(runner, cli, *args, "--out", clean).exit_code == 0
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "segbatch", "run", *map(str, args), "--out", str(out), "--address", ray_address, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _ledgers(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    total = sum(zarr.open_group(str(clean / n), mode="r")[LEDGER].shape[0] for n in "abcd")
    assert 2 <= _ledgers(out) < total, "the job was not killed mid-run"
    assert zarr.open_group(str(out), mode="r").attrs["segbatch"]["status"] == "running"
    r = run(runner, cli, *args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    for name in "abcd":
        assert_same(arrays(out / name), arrays(clean / name))
        assert zarr.open_group(str(out / name), mode="r").attrs["segbatch"]["status"] == "complete"
    assert zarr.open_group(str(out), mode="r").attrs["segbatch"]["status"] == "complete"


def test_a_changed_list_is_refused_on_resume_unless_inputs_are_added_explicitly(ray_address, runner, cli, clips, tiny_model, tmp_path):
    manifest = tmp_path / "inputs.txt"
    manifest.write_text(f"{clips / 'day1' / 'b.mp4'}\n")
    out = tmp_path / "job.zarr"
    args = ("--input", f"@{manifest}", "--out", out, *settings(tiny_model))
    assert run(runner, cli, *args).exit_code == 0
    first = zarr.open_group(str(out), mode="r").attrs["segbatch"]["runs"][0]
    manifest.write_text(f"{clips / 'day1' / 'b.mp4'}\n{clips / 'c.mp4'}\n")
    r = run(runner, cli, *args, "--resume")
    assert r.exit_code == 2 and "1 input(s) are not in" in r.output and "c.mp4" in r.output and "--add-inputs" in r.output
    r = run(runner, cli, *args, "--resume", "--add-inputs")
    assert r.exit_code == 0, r.output
    attrs = zarr.open_group(str(out), mode="r").attrs["segbatch"]
    assert [i["status"] for i in attrs["inputs"]] == ["complete", "complete"] and len(attrs["runs"]) == 2
    entries = {i["name"]: [json.loads(e) for e in zarr.open_group(str(out / i["name"]), mode="r")[LEDGER][...]] for i in attrs["inputs"]}
    old, new = entries.pop("b"), next(iter(entries.values()))
    assert {e["run"] for e in old} == {first}  # the input done before was not planned or run again
    assert {e["run"] for e in new} == {attrs["runs"][1]}
    manifest.write_text(f"{clips / 'c.mp4'}\n")
    r = run(runner, cli, *args, "--resume")
    assert r.exit_code == 2 and "not among the inputs given now" in r.output and "b.mp4" in r.output


def test_verify_finds_a_damaged_group_and_resume_repairs_it(runner, cli, clips, tiny_model, job, tmp_path):
    copy = tmp_path / "job.zarr"
    shutil.copytree(job, copy)
    r = runner.invoke(cli, ["verify", str(copy)])
    assert r.exit_code == 0 and "of 3 groups" in r.output and "all match" in r.output
    chunk = min((copy / "day1--a" / "labels").glob("c.*"))
    chunk.unlink()
    r = runner.invoke(cli, ["verify", str(copy)])
    assert r.exit_code == 1 and "day1--a: unit" in r.output and "missing" in r.output
    assert runner.invoke(cli, ["verify", str(copy), "--group", "c"]).exit_code == 0
    r = run(runner, cli, "--input", clips, "--out", copy, *settings(tiny_model), "--resume")
    assert r.exit_code == 0, r.output
    assert runner.invoke(cli, ["verify", str(copy)]).exit_code == 0
    assert_same(arrays(copy / "day1--a"), arrays(job / "day1--a"))


def test_export_one_input_or_every_input(runner, cli, job, tmp_path):
    r = runner.invoke(cli, ["export", str(job), "--to", str(tmp_path / "one.mp4")])
    assert r.exit_code == 2 and "--group NAME" in r.output and "{name}" in r.output
    r = runner.invoke(cli, ["export", str(job), "--group", "c", "--to", str(tmp_path / "c.mp4")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.mp4").stat().st_size > 0
    r = runner.invoke(cli, ["export", str(job), "--to", str(tmp_path / "all" / "{name}.mp4")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["c.mp4", "day1--a.mp4", "day1--b.mp4"]
    r = runner.invoke(cli, ["export", str(job), "--to", str(job / "{name}.mp4")])
    assert r.exit_code == 2 and "inside the store" in r.output


def test_options_for_another_kind_and_mixed_inputs_are_refused(runner, cli, clips, tiny_model, tmp_path):
    r = run(runner, cli, "--input", clips, "--out", tmp_path / "x.zarr", *settings(tiny_model, "--tile", 128))
    assert r.exit_code == 2 and "--tile: not for a video" in r.output
    (clips.parent / "mixed").mkdir()
    write_geotiff(clips.parent / "mixed" / "s.tif")
    write_video(clips.parent / "mixed" / "v.mp4", 8)
    r = run(runner, cli, "--input", clips.parent / "mixed", "--out", tmp_path / "y.zarr", *settings(tiny_model))
    assert r.exit_code == 2 and "s.tif" in r.output and "v.mp4" in r.output
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
