"""What a store must keep bit for bit across a pure restructuring of the engine, and the runs that write one per kind.

tests/data/store_bits.json holds, for each case of CASES, the description
`store_bits` gives of the store that `segbatch run` wrote from the inputs built
here, with the code of the commit that recorded it; tests/engine/test_store_bits.py
runs the same command with today's code and compares. Regenerate it only when a
change is meant to alter what a store holds (a new attribute, other chunks,
other values), never to make a restructuring pass; from the repository root
(about a minute on 2 cores):

    .venv/bin/python -m tests.helpers.store_bits tests/data/store_bits.json

Digests are compared as RECORDED_DIGESTS would make them, each once checked
with the algorithm it names: the values decide them, so a store whose
digests use another algorithm (xxh3-128 since December 2026) keeps its bits.

Float kernels differ across CPU instruction sets, so the file records
torch's CPU capability (AVX512 when it was first recorded) and the test is
skipped under any other: regenerate it on a machine of that capability.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers.folders import pixels, write_image
from tests.helpers.rasters import write_geotiff
from tests.helpers.videos import write_video

CHECKPOINT = "tiny.pt"


def tiny_checkpoint(path: Path) -> Path:
    """The tiny 11-class SegNet-Basic of the test suite, as the same bytes every time.

    save_checkpoint writes through a randomly named temporary file, whose name
    torch keeps inside the archive; saving its payload again at `path` makes
    the file (and so the model digest a store records) the same on every build.
    """
    import torch

    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    model = tiny_segnet_basic(11)
    save_checkpoint(model, path, ModelSpec.of(model))
    torch.save(torch.load(path, map_location="cpu", weights_only=True), path)
    return path


def video(work: Path) -> Path:
    """256 frames of 32x48 in GOPs of 16: on two actors, units of two 8-frame chunks, so batches of 3 cross chunks."""
    return write_video(work / "clip.mp4", 256, gop=16, height=32, width=48)


def raster(work: Path) -> Path:
    """A 96x128 GeoTIFF with a CRS and a nodata corner: with --tile 64 --overlap 8, six tiles, the first partly nodata."""
    return write_geotiff(work / "scene.tif", seed=1)


def images(work: Path) -> Path:
    """Three PNGs of different sizes, one of them grey."""
    folder = work / "photos"
    write_image(folder / "a.png", pixels(1, 40, 56))
    write_image(folder / "b.png", pixels(2, 64, 48))
    write_image(folder / "nested" / "c.png", pixels(3, 30, 50, bands=1))
    return folder


def video_job(work: Path) -> Path:
    """A folder of three short videos (one in a subfolder): one group each."""
    folder = work / "drives"
    (folder / "day1").mkdir(parents=True)
    write_video(folder / "day1" / "a.mp4", 12, gop=8)
    write_video(folder / "b.mp4", 9, gop=4, height=32, width=48)
    write_video(folder / "c.mp4", 16, gop=8)
    return folder


def raster_job(work: Path) -> Path:
    """A folder of two GeoTIFFs of different sizes, one without nodata."""
    folder = work / "scenes"
    folder.mkdir()
    write_geotiff(folder / "east.tif", seed=2)
    write_geotiff(folder / "west.tif", height=80, width=72, nodata=None, hole=False, seed=3)
    return folder


@dataclass(frozen=True)
class Case:
    """One store to compare: how its input is built, and the options of `segbatch run` besides --input, --out and --model."""

    build: Callable[[Path], Path]
    options: tuple[str, ...]


_TWO_ACTORS = ("--actors", "2", "--cpus-per-actor", "1")
_TILES = ("--tile", "64", "--overlap", "8")
CASES: dict[str, Case] = {
    "video": Case(video, ("--samples", "2", "--batch-size", "3", "--outputs", "mutual_information,probs", *_TWO_ACTORS)),
    "raster": Case(raster, ("--samples", "2", *_TILES, *_TWO_ACTORS)),
    "images": Case(images, ("--samples", "2", *_TWO_ACTORS)),
    "video_job": Case(video_job, ("--samples", "2", "--batch-size", "3", *_TWO_ACTORS)),
    "raster_job": Case(raster_job, ("--samples", "1", *_TILES, *_TWO_ACTORS)),
}


def run_case(name: str, work: Path, runner: Any, cli: Any, address: str) -> dict[str, Any]:
    """Build case `name`'s input and checkpoint in `work`, run it through the CLI on the Ray runtime at `address`, and describe it all."""
    case = CASES[name]
    work.mkdir(parents=True, exist_ok=True)
    source = case.build(work)
    model = tiny_checkpoint(work / CHECKPOINT)
    out = work / "out.zarr"
    args = ["run", "--input", str(source), "--out", str(out), "--model", str(model), *case.options, "--address", address, "--quiet"]
    result = runner.invoke(cli, args)
    if result.exit_code != 0:
        raise AssertionError(f"segbatch {' '.join(args)} exited {result.exit_code}:\n{result.output}") from result.exception
    return {"inputs": input_digests(work, [source, model]), **store_bits(out, work)}


def input_digests(work: Path, paths: list[Path]) -> dict[str, str]:
    """The sha256 of every file given or under a folder given, by its path relative to `work`."""
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return {f.relative_to(work).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def store_bits(path: Path, work: Path | None = None) -> dict[str, Any]:
    """A JSON-able description of the store at `path` that a pure restructuring must leave unchanged.

    For the root and every group: its attributes, less what differs between two
    runs of the same command (VOLATILE_*); for every array (coordinates and the
    ledger included): its layout and attributes, and the sha256 of its values, or
    for a ledger its entries less their volatile fields. What depends on the
    software versions (the store's version, the `software` of its configuration,
    and the fingerprint digested from it) is kept apart, under "software".
    `work` (the folder of the run's inputs) is written as <work> wherever a text names it.
    """
    import zarr

    root = zarr.open_group(str(path), mode="r")
    groups: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    software: dict[str, Any] = {}
    for key, member in [("", root), *sorted(root.members(max_depth=None), key=lambda m: m[0])]:
        if isinstance(member, zarr.Group):
            groups[key] = _stable_attrs(_plain(dict(member.attrs)), software.setdefault(key, {}))
        else:
            arrays[key] = _array(member)
    for key, attrs in groups.items():  # each input's bookkeeping group: its coordinates' digests, its ledger's
        if key.rsplit("/", 1)[-1] == "_segbatch":
            _digests_as_recorded(root, key.rpartition("_segbatch")[0], attrs, arrays[f"{key}/ledger"])
    description = {"groups": groups, "arrays": arrays, "software": {k: v for k, v in software.items() if v}}
    return _relative(description, work) if work is not None else description


RECORDED_DIGESTS = "blake3-128"  # what the stores of tests/data/store_bits.json recorded


def _digests_as_recorded(root: Any, prefix: str, bookkeeping: dict[str, Any], ledger: dict[str, Any]) -> None:
    """Each digest of the ledger and the coordinates, once checked against what it digests with the algorithm it names, made
    again with RECORDED_DIGESTS: a digest follows from the values (whose sha256 the description holds), so a store written
    with another algorithm keeps its bits as long as each of its digests is right. One that is wrong stays, marked."""
    from segbatch.store import chunk_region, coordinate_digest, digest, digest_algorithm, same_digest

    def again(recorded: str, made: Callable[[str], str]) -> str:
        if recorded == "fill":
            return recorded
        if not same_digest(made(digest_algorithm(recorded)), recorded):
            return f"wrong: {recorded}"
        return made(RECORDED_DIGESTS)

    coordinates = bookkeeping.get("coordinates", {})
    for name, recorded in coordinates.items():
        coordinates[name] = again(recorded, lambda algorithm, name=name: coordinate_digest(root[prefix + name], algorithm))
    for entry in ledger["entries"]:
        for key, recorded in (entry or {}).get("chunks", {}).items():
            name, index = key.rsplit("/", 1)
            arr = root[prefix + name]
            values = arr[chunk_region(arr, [int(i) for i in index.split(".")])]
            entry["chunks"][key] = again(recorded, lambda algorithm, arr=arr, values=values: digest(values, arr.fill_value, algorithm))


# What two runs of one command write differently, found by writing each case twice with the same code and comparing.
VOLATILE_ENTRY = ("run", "node", "seconds", "stages")  # a ledger entry: which run and node did the unit, how long its stages took
VOLATILE_LEASE = ("heartbeat", "host", "pid", "pid_started", "run", "started")  # the lease: who held it, and when
VOLATILE_ATTRS = ("runs",)  # the ids of the runs whose ledger entries count
# the summary: timings, and what depends on how Ray scheduled the units (actors that got one, tiles kept at once, tiles read
# again by a stitch task in another process, stitching
# overlapped with inference)
VOLATILE_SUMMARY = ("actors", "device", "stages", "stitch_overlap", "stitch_tile_reads", "tiles_peak")
SOFTWARE = ("version", "fingerprint")  # the fingerprint is a digest of the configuration, its software versions included


def _stable_attrs(attrs: dict[str, Any], software: dict[str, Any]) -> dict[str, Any]:
    """A group's attributes less their volatile fields; those that depend on the software versions move to `software`."""
    if "segbatch_lease" in attrs:
        attrs["segbatch_lease"] = _without(attrs["segbatch_lease"], VOLATILE_LEASE)
    ours = attrs.get("segbatch")
    if isinstance(ours, dict):
        software.update({k: ours.pop(k) for k in SOFTWARE if k in ours})
        if "software" in ours.get("config", {}):
            software["config.software"] = ours["config"].pop("software")
        summary = ours.get("summary")
        if isinstance(summary, dict):
            ours["summary"] = {k: v for k, v in _without(summary, VOLATILE_SUMMARY).items() if not k.endswith("seconds")}
        attrs["segbatch"] = _without(ours, VOLATILE_ATTRS)
    return attrs


def _without(mapping: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def _array(arr: Any) -> dict[str, Any]:
    values = np.asarray(arr[...])
    if values.dtype.kind in "OUST":  # text: its characters (object arrays hold pointers)
        text = [str(v) for v in values.ravel().tolist()]
        if arr.path.endswith("ledger"):
            return {**_layout(arr), "entries": [_without(json.loads(t), VOLATILE_ENTRY) if t else None for t in text]}
        content = json.dumps(text).encode()
    else:
        content = np.ascontiguousarray(values).tobytes()
    return {**_layout(arr), "sha256": hashlib.sha256(content).hexdigest()}


def _layout(arr: Any) -> dict[str, Any]:
    meta = arr.metadata
    return {
        "shape": list(arr.shape),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "dtype": str(arr.dtype),
        "fill_value": _plain(arr.fill_value),
        "dimension_names": list(meta.dimension_names or ()),
        "codecs": [_plain(c.to_dict()) for c in meta.codecs],
        "attributes": _plain(dict(arr.attrs)),
    }


def _plain(value: Any) -> Any:
    """`value` as JSON can hold it exactly: numpy scalars as Python ones, NaN and infinities as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _relative(value: Any, work: Path) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, work) for v in value]
    if isinstance(value, str):
        return value.replace(str(work.resolve()), "<work>").replace(str(work), "<work>")
    return value


def differences(recorded: Any, found: Any, path: str = "") -> list[str]:
    """Where two descriptions differ, a line each: "PATH: recorded X, now Y"."""
    if isinstance(recorded, dict) and isinstance(found, dict):
        lines = []
        for key in sorted(set(recorded) | set(found)):
            where = f"{path}.{key or '(root)'}" if path else key
            if key not in found:
                lines.append(f"{where}: recorded {_short(recorded[key])}, now missing")
            elif key not in recorded:
                lines.append(f"{where}: not recorded, now {_short(found[key])}")
            else:
                lines += differences(recorded[key], found[key], where)
        return lines
    if isinstance(recorded, list) and isinstance(found, list) and len(recorded) == len(found):
        return [line for i, (r, f) in enumerate(zip(recorded, found)) for line in differences(r, f, f"{path}[{i}]")]
    return [] if recorded == found else [f"{path}: recorded {_short(recorded)}, now {_short(found)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:200] + "..."


def main(out: Path) -> None:
    """Record every case with the code importable as `segbatch`, on the tests' Ray runtime (`start_test_ray`)."""
    import tempfile

    import ray
    import torch
    from click.testing import CliRunner

    from segbatch.cli.main import cli
    from tests.helpers.runtime import start_test_ray

    address = start_test_ray()
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            cases[name] = run_case(name, Path(tmp) / name, CliRunner(), cli, address)
    ray.shutdown()
    record = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": cases}
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
