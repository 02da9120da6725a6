"""`segbatch verify` checks everything a run wrote (DESIGN.md rule 8), and never calls a store that is not complete a pass.

Coordinates (time; x, y, spatial_ref) have digests recorded when the store is
made; a ledger entry without digests in a store whose version always writes
them is damage; a store still running, stopped or failed says so and exits 1;
`info` of a failed store gives its recorded cause and the --resume command
that finishes it. Stores made before digests were recorded still verify.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from segbatch.store import FILL_DIGEST, LEDGER
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke, run
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def made(ray_address, runner_module, cli_module, tiny_model, tmp_path_factory):
    """A complete video store (2 units of 8 frames, frames 2:18 of 20) and a complete raster store, with the arguments that made them."""
    folder = tmp_path_factory.mktemp("verify")
    video = write_video(folder / "drive.mp4", 20, gop=8)
    scene = write_geotiff(folder / "scene.tif", height=64, width=80)
    out = {}
    for kind, args in (
        ("video", ("--input", video, "--model", tiny_model, "--samples", 1, "--frames", "2:18", "--batch-size", 2)),
        ("raster", ("--input", scene, "--model", tiny_model, "--samples", 1, "--tile", 64, "--overlap", 16, "--keep-tiles")),
    ):
        store = folder / f"{kind}.zarr"
        r = run(runner_module, cli_module, "--out", store, *args)
        assert r.exit_code == 0, r.output
        out[kind] = (store, args)
    return out


def copy(made, kind, tmp_path) -> Path:
    out = tmp_path / f"{kind}.zarr"
    shutil.copytree(made[kind][0], out)
    return out


def set_attrs(store: Path, **changes) -> None:
    root = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    root.attrs["segbatch"] = {k: v for k, v in {**root.attrs["segbatch"], **changes}.items() if v is not None}
    zarr.consolidate_metadata(str(store))


def edit_entry(store: Path, unit: int, edit) -> None:
    ledger = zarr.open_group(str(store), mode="r+")[LEDGER]
    entry = json.loads(str(ledger[...][unit]))
    edit(entry)
    ledger[unit] = json.dumps(entry)


def entry(store: Path, unit: int) -> dict:
    return json.loads(str(zarr.open_group(str(store), mode="r")[LEDGER][unit]))


def resume_lost_unit_1(runner, cli, made, store: Path) -> None:
    """The driver died before unit 1 was recorded: --resume runs it with today's code, and the store verifies."""
    set_attrs(store, status="running", summary=None)
    zarr.open_group(str(store), mode="r+")[LEDGER][1] = ""
    r = run(runner, cli, "--out", store, *made["video"][1], "--resume")
    assert r.exit_code == 0, r.output


def verify_json(runner, cli, store):
    r = invoke(runner, cli, "verify", store, "--json")
    return r.exit_code, json.loads(r.stdout)


def test_coordinates_have_digests_and_verify_finds_each_altered(runner, cli, made, tmp_path):
    for kind, names in (("video", ["time"]), ("raster", ["spatial_ref", "x", "y"])):
        code, report = verify_json(runner, cli, made[kind][0])
        assert code == 0 and report["ok"] and report["coordinates_checked"] == len(names) and report["unchecked_coordinates"] == 0, kind

    # a time value, an x value, and spatial_ref's GeoTransform (its content is its attributes: the grid a GIS reads)
    video, raster = copy(made, "video", tmp_path), copy(made, "raster", tmp_path)
    zarr.open_group(str(video), mode="r+")["time"][3] = 99.0
    root = zarr.open_group(str(raster), mode="r+", use_consolidated=False)
    root["x"][0] = root["x"][0] + 1.0
    transform = root["spatial_ref"].attrs["GeoTransform"].split()
    root["spatial_ref"].attrs["GeoTransform"] = " ".join([transform[0], "31.0", *transform[2:]])
    zarr.consolidate_metadata(str(raster))
    for store, bad in ((video, ["time"]), (raster, ["spatial_ref", "x"])):
        r = invoke(runner, cli, "verify", store)
        assert r.exit_code == 1, r.output
        for name in bad:
            assert f"coordinate {name} altered" in r.output
        assert "coordinate y" not in r.output and "all match" not in r.output
        assert "--overwrite makes it again" in r.output  # no unit writes coordinates again: --resume cannot repair them
        attrs = zarr.open_group(str(store)).attrs["segbatch"]
        assert attrs["status"] == "damaged" and attrs["verify"]["bad_coordinates"] == bad

    r = run(runner, cli, "--out", video, *made["video"][1], "--resume")
    assert r.exit_code == 2 and "coordinates time altered" in r.output and "--overwrite" in r.output


def test_a_coordinate_without_its_digest_is_damage_in_a_store_that_records_them(runner, cli, made, tmp_path):
    store = copy(made, "raster", tmp_path)
    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)["_segbatch"]
    group.attrs["coordinates"] = {k: v for k, v in group.attrs["coordinates"].items() if k != "x"}
    zarr.consolidate_metadata(str(store))
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1 and "coordinate x has no digest" in r.output and "all match" not in r.output


def test_a_ledger_entry_without_digests_is_damage_and_resume_redoes_its_unit(runner, cli, made, tmp_path):
    store = copy(made, "video", tmp_path)
    edit_entry(store, 1, lambda e: e.pop("chunks"))
    code, report = verify_json(runner, cli, store)
    assert code == 1 and not report["ok"] and report["bad_units"] == [1] and report["unchecked_units"] == 0
    r = invoke(runner, cli, "verify", store)
    assert "unit 1: its ledger entry has no digests" in r.output and "written before segbatch recorded them" not in r.output
    assert zarr.open_group(str(store)).attrs["segbatch"]["status"] == "damaged"

    r = run(runner, cli, "--out", store, *made["video"][1], "--resume")
    assert r.exit_code == 0 and "1 units already done" in r.output, r.output  # unit 1 redone, with its digests
    assert invoke(runner, cli, "verify", store).exit_code == 0
    assert_same(arrays(store), arrays(made["video"][0]))


@pytest.mark.parametrize("kind", ["video", "raster"])
def test_a_chunk_digest_dropped_from_its_units_entry_is_damage(runner, cli, made, tmp_path, kind):
    """Each unit's entry must vouch for every chunk of its region (a video unit's frames, a raster tile's core), not just some."""
    store = copy(made, kind, tmp_path)
    key = "labels/1.0.0" if kind == "video" else "entropy/0.1"
    unit = 1
    edit_entry(store, unit, lambda e: e["chunks"].pop(key))
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1 and f"unit {unit}: chunk {key} has no digest" in r.output and "all match" not in r.output, r.output


@pytest.mark.parametrize("kind", ["video", "raster"])
def test_each_chunk_is_one_file_in_its_arrays_folder(made, kind):
    """Chunk files are c.<i>.<j>... beside their array's zarr.json, no folder per chunk index (one inode per chunk written,
    not three): a ledger entry's chunk key "labels/1.0.0" is the file labels/c.1.0.0, and every file there is one."""
    store = made[kind][0]
    digests = {k: d for t in zarr.open_group(str(store), mode="r")[LEDGER][...] for k, d in json.loads(str(t))["chunks"].items()}
    names = {key.split("/")[0] for key in digests} | ({"tiles/probs", "tiles/uncertainty"} if kind == "raster" else set())
    files = {f"{name}/{p.name}" for name in names for p in (store / name).iterdir() if p.name != "zarr.json"}
    assert all((store / f).is_file() for f in files)
    stored = {name + "/c." + index for name, index in (key.rsplit("/", 1) for key, d in digests.items() if d != FILL_DIGEST)}
    assert stored and {f for f in files if not f.startswith("tiles/")} == stored
    assert kind == "video" or any(f.startswith("tiles/probs/c.") for f in files)  # the kept tiles: one file each too


def with_digests(root: zarr.Group, algorithm: str) -> None:
    """Every digest of the store (each ledger entry's chunks, the coordinates) made again with `algorithm`, as a segbatch of
    that time recorded them; the caller consolidates the metadata."""
    from segbatch.store import chunk_region, coordinate_digest, digest

    ledger = root[LEDGER]
    for unit, text in enumerate(ledger[...]):
        entry = json.loads(str(text))
        for key in entry["chunks"]:
            name, index = key.rsplit("/", 1)
            arr = root[name]
            entry["chunks"][key] = digest(arr[chunk_region(arr, [int(i) for i in index.split(".")])], arr.fill_value, algorithm)
        ledger[unit] = json.dumps(entry)
    group = root["_segbatch"]
    group.attrs["coordinates"] = {name: coordinate_digest(root[name], algorithm) for name in group.attrs["coordinates"]}


def as_written_by_0_3(store: Path) -> None:
    """Make `store` what segbatch 0.3.0 wrote: Zstd (Zarr's default) for every output array, chunk keys in Zarr's default
    encoding (c/<i>/<j>/<k>: a folder per index), BLAKE2b-128 digests."""
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    for name in ("labels", "entropy", "confidence", "uncertainty"):
        old = root[name]
        values, attrs = old[...], dict(old.attrs)
        new = root.create_array(
            name,
            shape=old.shape,
            chunks=old.chunks,
            dtype=old.dtype,
            fill_value=old.fill_value,
            dimension_names=old.metadata.dimension_names,
            attributes=attrs,
            compressors=ZstdCodec(level=0),
            overwrite=True,
        )
        new[...] = values
    with_digests(root, "blake2b-128")
    root.attrs["segbatch"] = {**root.attrs["segbatch"], "version": "0.3.0"}
    zarr.consolidate_metadata(str(store))


def alter(store: Path, frame: int) -> None:
    """Change one label of `frame` (to another class): its chunk no longer matches its digest."""
    labels = zarr.open_group(str(store), mode="r+")["labels"]
    labels[frame, 0, 0] = (int(labels[frame, 0, 0]) + 1) % 11


def test_a_store_written_before_blake3_and_the_new_codecs_verifies_and_resumes(runner, cli, made, tmp_path):
    """A 0.3.0 store (Zstd arrays, BLAKE2b-128 digests, chunks in a folder per index) verifies; resumed, its arrays keep their
    codec and chunk folders, the new unit's digests are today's (xxh3-128), and every digest is checked with the algorithm it
    names."""
    store = copy(made, "video", tmp_path)
    before = arrays(store)
    as_written_by_0_3(store)
    assert all(d.startswith("blake2b-128:") for d in entry(store, 1)["chunks"].values())
    code, report = verify_json(runner, cli, store)
    assert code == 0 and report["ok"] and report["chunks_checked"] > 0 and report["coordinates_checked"] == 1, report

    resume_lost_unit_1(runner, cli, made, store)
    assert all(d.startswith("xxh3-128:") for d in entry(store, 1)["chunks"].values())
    assert all(d.startswith("blake2b-128:") for d in entry(store, 0)["chunks"].values())
    root = zarr.open_group(str(store), mode="r")
    assert [type(c).__name__ for c in root["entropy"].compressors] == ["ZstdCodec"]  # the store's codecs are its own
    assert (store / "entropy" / "c" / "1" / "0" / "0").is_file() and not list((store / "entropy").glob("c.*"))  # and its chunk keys
    assert_same(arrays(store), before)
    code, report = verify_json(runner, cli, store)
    assert code == 0 and report["ok"], report

    zarr.open_group(str(store), mode="r+")["labels"][0, 0, 0] = 7  # a BLAKE2b digest still catches an altered chunk
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1 and "unit 0: chunk labels/0.0.0 altered" in r.output, r.output


def test_a_store_with_blake3_digests_verifies_and_a_resumed_unit_records_xxh3_beside_them(runner, cli, made, tmp_path):
    """Stores written from BLAKE3 until xxh3 (December 2026) recorded BLAKE3-128 digests: they verify, find an altered chunk,
    and resume; the unit redone records xxh3-128, and each digest is checked with the algorithm it names."""
    store = copy(made, "video", tmp_path)
    with_digests(zarr.open_group(str(store), mode="r+", use_consolidated=False), "blake3-128")
    zarr.consolidate_metadata(str(store))
    assert all(d.startswith("blake3-128:") for unit in (0, 1) for d in entry(store, unit)["chunks"].values())
    code, report = verify_json(runner, cli, store)
    assert code == 0 and report["ok"] and report["chunks_checked"] > 0 and report["coordinates_checked"] == 1, report

    resume_lost_unit_1(runner, cli, made, store)
    assert all(d.startswith("xxh3-128:") for d in entry(store, 1)["chunks"].values()) and entry(store, 1)["chunks"]
    assert all(d.startswith("blake3-128:") for d in entry(store, 0)["chunks"].values())
    code, report = verify_json(runner, cli, store)
    assert code == 0 and report["ok"], report

    alter(store, 0)  # unit 0: frames 0-7, BLAKE3
    alter(store, 8)  # unit 1: frames 8-15, xxh3
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1 and "unit 0: chunk labels/0.0.0 altered" in r.output and "unit 1: chunk labels/1.0.0 altered" in r.output, r.output


def test_a_store_made_before_digests_were_recorded_still_verifies(runner, cli, made, tmp_path):
    """Version 0.2.0: bare BLAKE2b hex digests, some entries without any, no coordinate digests: what it has is checked."""
    store = copy(made, "video", tmp_path)
    as_written_by_0_3(store)
    set_attrs(store, version="0.2.0")
    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)["_segbatch"]
    group.attrs.pop("coordinates")
    zarr.consolidate_metadata(str(store))
    edit_entry(store, 0, lambda e: e.update(chunks={k: v.split(":")[-1] for k, v in e["chunks"].items()}))
    edit_entry(store, 1, lambda e: e.pop("chunks"))
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 0 and "all match; 1 units and 1 coordinates have no digests (written before segbatch recorded them)" in r.output

    zarr.open_group(str(store), mode="r+")["labels"][0, 0, 0] = 7  # unit 0's bare digests are still checked
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1 and "unit 0: chunk labels/0.0.0 altered" in r.output


@pytest.mark.parametrize(
    ("status", "unfinished", "says"),
    [
        ("running", [1], "not complete (status running): 1 of 2 units not finished"),
        ("failed", [0, 1], "not complete (status failed): 2 of 2 units not finished; no data to check"),
        ("failed", [], "the store is failed: every unit is in the ledger, but its run did not finish it"),
        ("stitching", [], "the store is stitching"),
    ],
)
def test_verify_of_a_store_that_is_not_complete_says_so_and_exits_1(runner, cli, made, tmp_path, status, unfinished, says):
    store = copy(made, "video", tmp_path)
    set_attrs(store, status=status, summary=None, **({"error": "the disk is full"} if status == "failed" else {}))
    for unit in unfinished:
        zarr.open_group(str(store), mode="r+")[LEDGER][unit] = ""
    r = invoke(runner, cli, "verify", store)
    assert r.exit_code == 1, r.output
    assert says in r.output and "all match" not in r.output, r.output
    assert "--resume finishes it" in r.output
    code, report = verify_json(runner, cli, store)
    assert code == 1 and not report["ok"] and report["status"] == status and report["unfinished_units"] == unfinished
    assert zarr.open_group(str(store)).attrs["segbatch"]["status"] == status  # an unfinished store is not marked damaged


@pytest.mark.parametrize("kind", ["video", "raster"])
def test_info_of_a_failed_store_gives_its_cause_and_the_resume_command_that_finishes_it(runner, cli, made, tmp_path, kind):
    store = copy(made, kind, tmp_path)
    set_attrs(store, status="failed", error="writing the store failed: No space left on device", summary=None)
    zarr.open_group(str(store), mode="r+")[LEDGER][1] = ""

    r = invoke(runner, cli, "info", store)
    assert r.exit_code == 0, r.output
    rows = dict(line.split(None, 1) for line in r.output.splitlines() if line.strip() and not line.startswith(" "))
    assert rows["status"].startswith("failed") and rows["error"] == "writing the store failed: No space left on device"
    command = shlex.split(rows["resume"])
    info = json.loads(invoke(runner, cli, "info", store, "--json").stdout)
    assert info["error"] == rows["error"] and shlex.split(info["resume_command"]) == command
    assert command[:2] == ["segbatch", "run"] and command[-1] == "--resume" and str(store) in command
    if kind == "video":
        assert command[command.index("--frames") + 1] == "2:18" and command[command.index("--batch-size") + 1] == "2"
    else:
        assert command[command.index("--tile") + 1] == "64" and command[command.index("--overlap") + 1] == "16"

    total = zarr.open_group(str(store))[LEDGER].shape[0]
    r = run(runner, cli, *command[2:])  # the command as info gives it finishes the store
    assert r.exit_code == 0 and f"{total - 1} units already done" in r.output, r.output
    assert invoke(runner, cli, "verify", store).exit_code == 0
    assert_same(arrays(store), arrays(made[kind][0]))
    assert "resume" not in invoke(runner, cli, "info", store).output.split()


def test_info_of_a_failed_raster_store_whose_tiles_are_gone_says_to_run_it_again(runner, cli, made, tmp_path):
    store = copy(made, "raster", tmp_path)
    set_attrs(store, status="failed", error="stitching failed: a worker died", summary=None)
    shutil.rmtree(store / "tiles")
    zarr.consolidate_metadata(str(store))
    rows = dict(line.split(None, 1) for line in invoke(runner, cli, "info", store).output.splitlines() if line.strip() and not line.startswith(" "))
    assert rows["error"] == "stitching failed: a worker died" and "resume" not in rows
    assert rows["rerun"].startswith("segbatch run --input") and rows["rerun"].endswith("--overwrite")


def test_an_altered_coordinate_is_found_however_small(runner, cli, made, tmp_path):
    """The digest covers every bit: one time value moved by one ulp is altered."""
    store = copy(made, "video", tmp_path)
    time = zarr.open_group(str(store), mode="r+")["time"]
    time[0] = np.nextafter(time[0], np.inf)
    assert invoke(runner, cli, "verify", store).exit_code == 1
