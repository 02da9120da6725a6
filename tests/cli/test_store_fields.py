"""Every field a reader touches, set to every JSON type: one line and exit 2 from every command that reads it, or a normal run.

The fields are not listed here: they are found in a real store of each kind
(a video and a raster store made once for the module), walking every key of
the root `segbatch` attribute, of a ledger entry, of the lease and of the
coordinate digests (a list by its first item). Each field is set to a string,
a number, a boolean, a list, an object and null, and removed; a scalar keeps
its own type out (a value of the right type is not a type change). Then
info, verify, audit, export, stitch and run --resume run on a copy of the
store. A change is refused (exit 2, one line, never "internal error") unless
LENIENT says the value is one segbatch itself writes (an older version
lacking the field, a run that never got that far), in which case every
command works as on the untouched store. `config` is compared whole by
--resume and `geozarr` is read by no one, so only their own type is changed.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zarr

from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import run
from tests.helpers.videos import write_video

MISSING = object()
TYPES = {"string": "x", "number": 5, "boolean": True, "list": [5], "object": {"x": 5}, "null": None, "missing": MISSING}
OPAQUE = {("attrs", "config"), ("attrs", "geozarr")}  # their content is nobody's to read field by field
# objects whose keys are names (of stages, chunks, coordinates), not fields: like a list, one entry stands for all
NAMED = {("attrs", "summary.stages.seconds"), ("entry", "stages"), ("entry", "chunks"), ("bookkeeping", "coordinates")}
COMMANDS = ("info", "verify", "audit", "export", "stitch", "resume")
# the commands that read each place: the attributes and the ledger are read by all; the lease by those that claim the store
# or report its holder; the coordinate digests by verify alone
READERS = {"attrs": set(COMMANDS), "entry": set(COMMANDS), "lease": {"info", "verify", "stitch", "resume"}, "bookkeeping": {"verify"}}

# What segbatch itself writes besides a complete store's values: (place, field pattern, JSON types, outcome). Outcomes:
# "valid": every command works as on the untouched store; "compared": only --resume refuses it (the configuration differs);
# "damage": a digest is gone from a store whose version records them all, which verify reports (exit 1) and the rest ignore.
LENIENT: list[tuple[str, str, set[str], str]] = [
    ("attrs", "source.declared_frames", {"missing", "null"}, "valid"),  # not every container declares its frames
    ("attrs", "source.demux_error", {"missing", "string"}, "valid"),  # null unless the file ends early
    ("attrs", "source.time_base", {"missing"}, "valid"),
    ("attrs", "source.frame_order", {"missing"}, "valid"),
    ("attrs", "source.nodata", {"null"}, "valid"),  # a raster without nodata
    ("attrs", "source.bands[0]", {"missing"}, "valid"),  # two bands are bands too
    ("attrs", "source.bands", {"list"}, "valid"),  # [5]: band 5, which the source lacks (audit leaves out its thumbnails)
    ("attrs", "model.path", {"missing"}, "valid"),
    ("attrs", "model.dropout", {"missing"}, "valid"),
    ("attrs", "model.width", {"missing"}, "valid"),
    ("attrs", "problems", {"missing"}, "valid"),
    ("attrs", "runs", {"missing"}, "valid"),  # stores before runs were recorded: every ledger entry counts
    ("attrs", "fingerprint", {"missing"}, "valid"),
    ("attrs", "resize", {"missing"}, "valid"),
    ("attrs", "summary", {"missing", "null", "object"}, "valid"),  # a store that never finished has no figures
    ("attrs", "summary.*", {"missing"}, "valid"),
    ("attrs", "summary.stages", {"object"}, "valid"),  # {"x": 5}: no stage times recorded (and a key segbatch does not read)
    ("attrs", "summary.stages.seconds", {"object"}, "valid"),  # {"x": 5}: a stage named x took 5 s
    ("attrs", "summary.stages.bottleneck", {"null"}, "valid"),
    ("attrs", "geozarr", {"missing", "object"}, "valid"),
    ("attrs", "config", {"object"}, "compared"),
    ("entry", "unit", {"missing"}, "valid"),
    ("entry", "node", {"missing"}, "valid"),
    ("entry", "seconds", {"missing"}, "valid"),
    ("entry", "stages", {"missing", "object"}, "valid"),  # {"x": 5}: a stage named x took 5 s
    ("entry", "stages.*", {"missing"}, "valid"),
    ("entry", "missing", {"missing"}, "valid"),
    ("entry", "damaged", {"missing"}, "valid"),
    ("entry", "messages", {"missing"}, "valid"),
    ("entry", "skipped", {"missing"}, "valid"),
    ("entry", "stitched", {"missing"}, "valid"),  # a tile whose chunks were not stitched yet
    ("entry", "chunks.*", {"missing"}, "damage"),
    ("entry", "chunks", {"missing"}, "damage"),
    ("lease", "*", set(TYPES), "valid"),  # a lease that is not what segbatch wrote owns nothing
    ("bookkeeping", "coordinates", {"missing"}, "damage"),
    ("bookkeeping", "coordinates.*", {"missing"}, "damage"),
]


@dataclass(frozen=True)
class Change:
    """One field of one place set to one JSON type."""

    place: str  # attrs | entry | lease | bookkeeping
    path: tuple[str | int, ...]
    jtype: str

    @property
    def name(self) -> str:
        return _name(self.path)

    def outcome(self) -> str:
        """valid | compared | damage | refused."""
        found = [o for place, pattern, types, o in LENIENT if place == self.place and self.jtype in types and _matches(self.name, pattern)]
        return found[0] if found else "refused"

    def expected(self, command: str, kind: str) -> int:
        if command == "stitch" and kind == "video":
            return 2  # only raster stores are stitched: refused whatever the change
        if command not in READERS[self.place]:
            return 0
        outcome = self.outcome()
        if outcome == "refused":
            return 2
        if outcome == "compared":
            return 2 if command == "resume" else 0
        if outcome == "damage":
            return 1 if command == "verify" else 0
        return 0


def _matches(name: str, pattern: str) -> bool:
    """A field's name against a LENIENT pattern: `*` is any run of characters; brackets are list indices, not classes."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), name) is not None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "list" if isinstance(value, list) else "object"


def field_paths(value: Any, place: str, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every field under `value`: each key of an object, the first item of a list or NAMED object, recursively (OPAQUE ones not entered)."""
    out: list[tuple[str | int, ...]] = []
    children = list(value.items()) if isinstance(value, dict) else [(0, value[0])] if isinstance(value, list) and value else []
    if (place, _name(path)) in NAMED:
        children = children[:1]
    for key, inner in children:
        out.append((*path, key))
        if (place, _name((*path, key))) not in OPAQUE:
            out.extend(field_paths(inner, place, (*path, key)))
    return out


def _name(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def changes_of(doc: dict[str, Any], place: str) -> list[Change]:
    """Each field of `doc` set to each JSON type but its own (lists and objects are also set to another list and object)."""
    out = []
    for path in field_paths(doc, place):
        own = _json_type(_get(doc, path))
        out += [Change(place, path, t) for t in TYPES if t != own or own in ("list", "object")]
    return out


def _get(doc: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, change: Change) -> None:
    parent, key = _get(doc, change.path[:-1]), change.path[-1]
    if change.jtype == "missing":
        del parent[key]
    else:
        parent[key] = copy.deepcopy(TYPES[change.jtype])


# where each place lives in a store, read and written as JSON
def _edit_json(path: Path, inside: tuple[str, ...], changes: list[Change]) -> None:
    meta = json.loads(path.read_text())
    for change in changes:
        _set(_get(meta, inside), change)
    path.write_text(json.dumps(meta))


def apply(store: Path, changes: list[Change]) -> None:
    by_place = {p: [c for c in changes if c.place == p] for p in READERS}
    if by_place["attrs"]:
        _edit_json(store / "zarr.json", ("attributes", "segbatch"), by_place["attrs"])
    if by_place["lease"]:
        _edit_json(store / "lease" / "zarr.json", ("attributes", "segbatch_lease"), by_place["lease"])
    if by_place["bookkeeping"]:  # the group's own metadata, and its copy in the root's consolidated metadata
        _edit_json(store / "_segbatch" / "zarr.json", ("attributes",), by_place["bookkeeping"])
        _edit_json(store / "zarr.json", ("consolidated_metadata", "metadata", "_segbatch", "attributes"), by_place["bookkeeping"])
    if by_place["entry"]:
        ledger = zarr.open_array(str(store / "_segbatch" / "ledger"), mode="r+")
        entry = json.loads(str(ledger[...][0]))
        for change in by_place["entry"]:
            _set(entry, change)
        ledger[0] = json.dumps(entry)


def places(store: Path) -> dict[str, dict[str, Any]]:
    """The documents of a store whose fields are changed: attributes, the first ledger entry, the lease, the coordinate digests."""
    root = json.loads((store / "zarr.json").read_text())
    return {
        "attrs": root["attributes"]["segbatch"],
        "entry": json.loads(str(zarr.open_array(str(store / "_segbatch" / "ledger"), mode="r")[...][0])),
        "lease": json.loads((store / "lease" / "zarr.json").read_text())["attributes"]["segbatch_lease"],
        "bookkeeping": {k: v for k, v in json.loads((store / "_segbatch" / "zarr.json").read_text())["attributes"].items() if k == "coordinates"},
    }


@dataclass(frozen=True)
class Made:
    kind: str
    store: Path
    source: Path
    args: tuple[Any, ...]  # the run's options besides --input/--out: --resume takes them again


@pytest.fixture(scope="module")
def made(ray_address, runner_module, cli_module, tiny_model, tmp_path_factory) -> dict[str, Made]:
    """A complete video store and a complete raster store (tiles kept, so it can be stitched again)."""
    folder = tmp_path_factory.mktemp("fields")
    video = write_video(folder / "drive.mp4", 16, gop=8)
    scene = write_geotiff(folder / "scene.tif", height=64, width=80)
    out = {}
    for kind, source, extra in (("video", video, ("--actors", 1)), ("raster", scene, ("--tile", 64, "--overlap", 16, "--keep-tiles"))):
        args = ("--model", tiny_model, "--samples", 1, *extra)
        store = folder / f"{kind}.zarr"
        r = run(runner_module, cli_module, "--input", source, "--out", store, *args)
        assert r.exit_code == 0, r.output
        out[kind] = Made(kind, store, source, args)
    return out


def command_args(command: str, made: Made, store: Path, folder: Path) -> list[Any]:
    return {
        "info": ["info", store],
        "verify": ["verify", store],
        "audit": ["audit", store, "--report", folder / "report", "--quiet"],
        "export": ["export", store, "--to", folder / ("overlay.mp4" if made.kind == "video" else "labels.tif"), "--quiet"],
        "stitch": ["stitch", store, "--quiet"],
        "resume": ["run", "--input", made.source, "--out", store, *made.args, "--resume", "--quiet"],
    }[command]


# the files a change touches (and a command that wrongly wrote before refusing would): put back after each refused change
TOUCHED = ("zarr.json", "lease/zarr.json", "_segbatch/zarr.json", "_segbatch/ledger/c/0")


def check(runner, cli, made: Made, changes: list[Change], folder: Path) -> list[str]:
    """Apply `changes` to a copy of the store and run every command that reads what changed; what went otherwise than expected.

    A refused change is refused before anything is written: its commands share one copy, whose TOUCHED files are put back
    afterwards for the next refused change; others get a fresh copy for each command (and the next change a fresh copy).
    """
    wrong = []
    store = folder / "store.zarr"
    refused = all(c.outcome() == "refused" for c in changes)
    original = {name: (made.store / name).read_bytes() for name in TOUCHED}
    for i, command in enumerate(c for c in COMMANDS if any(c in READERS[change.place] for change in changes)):
        if not refused or not store.exists():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(made.store, store)
        if i == 0 or not refused:
            apply(store, changes)
        want = max(c.expected(command, made.kind) for c in changes)
        r = runner.invoke(cli, [str(a) for a in command_args(command, made, store, folder)])
        what = f"{made.kind} {', '.join(f'{c.name}={c.jtype}' for c in changes)}: {command} exit {r.exit_code} (want {want}): {r.output.strip()[:300]!r}"
        if r.exit_code != want or "internal error" in r.output or "Traceback" in r.output:
            wrong.append(what)
        elif want == 2 and len(r.output.strip().splitlines()) != 1:
            wrong.append(f"{what} (not one line)")
        elif want == 1 and "no digest" not in r.output:
            wrong.append(f"{what} (does not name the missing digest)")
    if refused and not wrong:
        for name, data in original.items():
            (store / name).write_bytes(data)
    else:  # a fresh copy for the next change (a command that ran where it should have refused may have written anything)
        shutil.rmtree(folder)
    return wrong


def antichains(changes: list[Change]) -> list[list[Change]]:
    """Changes that leave the store valid, grouped so that none in a group is inside another's field (each stays visible)."""
    groups: list[list[Change]] = []
    for change in sorted(changes, key=lambda c: -len(c.path)):
        for group in groups:
            if all(c.place != change.place or (c.path[: len(change.path)] != change.path and change.path[: len(c.path)] != c.path) for c in group):
                group.append(change)
                break
        else:
            groups.append([change])
    return groups


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["video", "raster"])
def test_every_field_set_to_every_json_type_is_one_line_exit_2_or_a_normal_run(runner, cli, made, kind, tmp_path):
    made = made[kind]
    changes = [c for place, doc in places(made.store).items() for c in changes_of(doc, place)]
    fields = {(c.place, c.name) for c in changes}
    # the walk found what a reader touches (a wrong walk would pass by testing nothing)
    assert {("attrs", "source.kind"), ("attrs", "model.palette[0][0]"), ("attrs", "summary.stages.seconds.model"), ("entry", "run")} <= fields
    assert ("lease", "heartbeat") in fields
    assert ("attrs", "source.frame_range[0]" if kind == "video" else "source.bands[0]") in fields
    assert any(place == "entry" and name.startswith("chunks.") and "/" in name for place, name in fields)

    # the valid changes, grouped (each group one copy and one run of every command); every refused one on its own
    valid = [c for c in changes if c.outcome() == "valid"]
    runs = [[c] for c in changes if c.outcome() != "valid"] + antichains(valid)
    wrong = [line for group in runs for line in check(runner, cli, made, group, tmp_path / "case")]
    assert not wrong, f"{len(wrong)} of {len(runs)} cases:\n" + "\n".join(wrong[:40])
    assert ("bookkeeping", "coordinates") in fields  # the coordinate digests were among the fields


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("../../etc/1.0.0", "names no array"),
        ("labels/9.0.0", "is outside labels's grid"),
        ("labels/0.0", "is outside labels's grid"),
        ("ledger/0", "names no array"),
        ("tiles/0.0.0", "names no array"),
    ],
)
def test_a_chunk_key_that_names_no_chunk_of_the_store_is_refused(runner, cli, made, key, why, tmp_path):
    made = made["video"]
    store = tmp_path / "store.zarr"
    shutil.copytree(made.store, store)
    ledger = zarr.open_array(str(store / "_segbatch" / "ledger"), mode="r+")
    entry = json.loads(str(ledger[...][0]))
    entry["chunks"][key] = entry["chunks"].pop("labels/0.0.0")
    ledger[0] = json.dumps(entry)
    for command in ("info", "verify", "audit", "export", "resume"):
        r = runner.invoke(cli, [str(a) for a in command_args(command, made, store, tmp_path)])
        assert r.exit_code == 2, (command, r.output)
        (line,) = r.output.strip().splitlines()
        assert f"chunk key {key!r} {why}" in line and "internal error" not in line, (command, line)


def test_a_lease_field_of_another_type_owns_nothing(made, tmp_path):
    """read_lease gives a lease only when every field has its own type (a heartbeat "now" never ages, NaN is never stale)."""
    from segbatch.lease import read_lease

    store = tmp_path / "store.zarr"
    shutil.copytree(made["video"].store, store)
    path = store / "lease" / "zarr.json"
    original = json.loads(path.read_text())
    lease = original["attributes"]["segbatch_lease"]

    def write(fields: dict[str, Any]) -> None:
        path.write_text(json.dumps({**original, "attributes": {"segbatch_lease": fields}}))  # json writes a NaN as NaN

    allowed = {"pid_started": {"null", "missing"}, "released": {"missing"}}  # a process start unknown; a lease never released
    for change in changes_of(lease, "lease"):
        fields = copy.deepcopy(lease)
        _set(fields, change)
        write(fields)
        assert (read_lease(store) is not None) == (change.jtype in allowed.get(change.name, set())), change
    write({**lease, "heartbeat": float("nan")})
    assert read_lease(store) is None
    write(lease)
    assert read_lease(store) is not None
