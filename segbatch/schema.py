"""What segbatch writes into a store, as data: the one check of every attribute and ledger field a reader touches.

Readers (info, verify, audit, export, stitch, run --resume) take a store's
attributes and ledger entries on trust once they pass here, so a field of the
wrong type or shape, a missing one, or a chunk key that names no chunk of the
store is one line here (`segbatch.store` raises it as a StoreError, exit 2)
instead of a crash wherever the field is used. Each field is declared once,
with what it must be; keys segbatch does not read are let through (a later
version may add some), and a field that earlier versions did not write is
optional. `config` is compared whole by --resume, never read field by field,
so only its being a mapping is checked. The fields that differ between kinds
of input (`source`, ledger entries) are declared by each kind
(segbatch/kinds/), with the checks of this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any, str], "str | None"]  # (value, its path) -> what is wrong with it, or None

STATUSES = ("creating", "running", "stitching", "complete", "failed", "damaged")
DIGEST_ALGORITHM = "xxh3-128"  # what new digests are made with; each names its algorithm (a bare hex digest is BLAKE2b-128, before 0.3.0)
BLAKE3_DIGEST_ALGORITHM = "blake3-128"  # what digests were made with from BLAKE2b until xxh3 (December 2026)
BARE_DIGEST_ALGORITHM = "blake2b-128"  # what a bare hex digest (before 0.3.0) was made with, and every digest before BLAKE3
DIGEST_ALGORITHMS = (DIGEST_ALGORITHM, BLAKE3_DIGEST_ALGORITHM, BARE_DIGEST_ALGORITHM)  # what a store may record (a resumed store: several)
FILL_DIGEST = "fill"  # a chunk equal to its fill value: zarr stores nothing for it
_DIGEST = re.compile(rf"(?:(?:{'|'.join(map(re.escape, DIGEST_ALGORITHMS))}):)?[0-9a-f]{{32}}")
_CHUNK_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)/(\d+(?:\.\d+)*)")


def json_type(value: Any) -> str:
    """A value as its JSON type, for messages: "a string", "a list of 2", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _bad(path: str, value: Any, what: str) -> str:
    shown = repr(value) if isinstance(value, (int, float, bool, str)) and len(repr(value)) <= 24 else json_type(value)
    return f"{path} is {shown}, not {what}"


def _key(key: Any) -> str:
    """A key from the store in a path: as it is, or quoted with escapes when it holds a newline or another invisible character."""
    return str(key) if str(key).isprintable() else repr(str(key))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def string(value: Any, path: str) -> str | None:
    return None if isinstance(value, str) else _bad(path, value, "a string")


def boolean(value: Any, path: str) -> str | None:
    return None if isinstance(value, bool) else _bad(path, value, "true or false")


def integer(low: int | None = None, high: int | None = None) -> Check:
    what = "an integer" + (f" from {low} to {high}" if low is not None and high is not None else f" >= {low}" if low is not None else "")

    def check(value: Any, path: str) -> str | None:
        ok = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
        return None if ok else _bad(path, value, what)

    return check


def number(value: Any, path: str) -> str | None:
    return None if _is_number(value) else _bad(path, value, "a number")


def one_of(*values: str) -> Check:
    def check(value: Any, path: str) -> str | None:
        return None if isinstance(value, str) and value in values else _bad(path, value, f"one of {', '.join(values)}")

    return check


def nullable(check: Check) -> Check:
    def nullable_check(value: Any, path: str) -> str | None:
        return None if value is None else check(value, path)

    return nullable_check


def list_of(item: Check, length: int | None = None, least: int = 0, what: str | None = None) -> Check:
    """A list whose items pass `item`: `length` of them exactly, or at least `least`."""

    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) < least:
            return _bad(path, value, what or "a list" + (f" of {length}" if length is not None else " (not empty)" if least else ""))
        return next((p for i, v in enumerate(value) if (p := item(v, f"{path}[{i}]")) is not None), None)

    return check


def mapping_of(item: Check) -> Check:
    """An object whose values pass `item` (its keys are names: of stages, arrays, ...)."""

    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, Mapping):
            return _bad(path, value, "an object")
        return next((p for k, v in value.items() if (p := item(v, f"{path}.{_key(k)}")) is not None), None)

    return check


def fields(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None, rule: Callable[[Any, str], str | None] | None = None) -> Check:
    """An object with the `required` keys, and the `optional` ones when present, each passing its check; then `rule` on the whole."""

    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, Mapping):
            return _bad(path, value, "an object")
        for key, inner in required.items():
            if key not in value:
                return f"{path}.{key} is missing"
            if (problem := inner(value[key], f"{path}.{key}")) is not None:
                return problem
        for key, inner in (optional or {}).items():
            if key in value and (problem := inner(value[key], f"{path}.{key}")) is not None:
                return problem
        return rule(value, path) if rule is not None else None

    return check


def span(value: Any, path: str) -> str | None:
    """[start, stop]: two integers, 0 <= start <= stop (frames, images, tiles)."""
    ok = isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value) and value[0] <= value[1]
    return None if ok else _bad(path, value, "[start, stop] (two integers, 0 <= start <= stop)")


def dtype_name(value: Any, path: str) -> str | None:
    import numpy as np

    if isinstance(value, str):
        try:
            np.dtype(value)
            return None
        except TypeError:
            pass
    return _bad(path, value, "a numpy dtype name")


def version(value: Any, path: str) -> str | None:
    return None if isinstance(value, str) and re.match(r"\d+\.\d+", value) else _bad(path, value, "a version (e.g. 0.3.0)")


def version_tuple(text: str) -> tuple[int, ...]:
    """'0.3.0' -> (0, 3, 0); the leading numeric part only ('0.3.0.dev1' -> (0, 3, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def digest(value: Any, path: str) -> str | None:
    ok = isinstance(value, str) and (value == FILL_DIGEST or _DIGEST.fullmatch(value) is not None)
    named = ", ".join(f"{name}:<...>" for name in DIGEST_ALGORITHMS[1:])
    return None if ok else _bad(path, value, f"a digest ({DIGEST_ALGORITHM}:<32 hex digits>, {named} or {FILL_DIGEST})")


_INT0, _INT1 = integer(0), integer(1)


def _palette_fits(model: Mapping[str, Any], path: str) -> str | None:
    if len(model["palette"]) != len(model["classes"]):
        return f"{path}.palette has {len(model['palette'])} colours for {len(model['classes'])} classes"
    return None


MODEL = fields(
    {
        "arch": string,
        "classes": list_of(string, least=1, what="a list of class names"),
        "palette": list_of(list_of(integer(0, 255), length=3, what="[red, green, blue]"), least=1, what="a list of colours"),
        "sha256": string,
    },
    {"path": string, "dropout": string, "width": number, "temperature": nullable(number), "calibration": fields({"temperature": number})},
    _palette_fits,
)

RANGES = list_of(span)
# problems, by kind (problems.py writes them in words); a kind this version does not know is shown as it is
PROBLEMS: dict[str, Check] = {
    "frames": fields({}, {"kind": string, "frames": span, "missing": RANGES, "damaged": RANGES, "messages": list_of(string), "reason": nullable(string)}),
    "unreadable": fields({"kind": string, "path": string, "error": string}, {"image": nullable(_INT0)}),
    "skipped_tiles": fields({"kind": string, "tiles": RANGES, "count": _INT0}, {"reason": string}),
}


def problem(value: Any, path: str) -> str | None:
    if not isinstance(value, Mapping):
        return _bad(path, value, "an object")
    kind = value.get("kind", "frames")  # entries written before kinds existed are a video's frames
    if not isinstance(kind, str):
        return _bad(f"{path}.kind", kind, "a string")
    return PROBLEMS[kind](value, path) if kind in PROBLEMS else None


_SECONDS = mapping_of(number)
STAGES = fields({}, {"seconds": _SECONDS, "bottleneck": nullable(string)})
SUMMARY = nullable(
    fields(
        {},
        {
            **dict.fromkeys(("frames", "images", "tiles", "skipped_tiles", "unreadable", "actors", "tiles_peak", "stitch_tile_reads"), _INT0),
            **dict.fromkeys(("wall_seconds", "worker_seconds", "inference_seconds", "stitch_seconds", "stitch_task_seconds", "stitch_overlap"), number),
            "device": string,
            "actors_per_gpu": list_of(_INT1),
            "tiles_kept": boolean,
            "stages": STAGES,
        },
    )
)
VERIFY = fields({"checked": number, "bad_units": list_of(_INT0)}, {"bad_coordinates": list_of(string)})


def root_fields() -> Check:
    """The root `segbatch` attribute of a store (or of a job's group), with the kinds registered now; `source` by its kind, checked after these."""
    from segbatch.kinds import KINDS  # asked when checking: the kinds declare their fields with this module's checks

    return fields(
        {
            "version": version,
            "source": fields({"kind": one_of(*KINDS), "path": string}),
            "model": MODEL,
            "samples": _INT0,
            "seed": integer(),
            "config": mapping_of(lambda v, p: None),
            "status": one_of(*STATUSES),
        },
        {
            "problems": list_of(problem),
            "runs": list_of(string, least=1),  # the run that made the store, then each that resumed it
            "fingerprint": string,
            "resize": nullable(list_of(_INT1, length=2, what="[height, width]")),
            **{k.unit_size: _INT1 for k in KINDS.values() if k.unit_size is not None},  # the items of a unit: unit_frames, unit_images
            "summary": SUMMARY,
            "geozarr": mapping_of(lambda v, p: None),
            "error": string,
            "verify": VERIFY,
        },
    )


def root_problem(attrs: Mapping[str, Any]) -> str | None:
    """What is wrong with a store's `segbatch` attribute (paths as `source.frame_range`), or None."""
    from segbatch.kinds import kind

    if (found := root_fields()(attrs, "segbatch")) is not None:
        return found.removeprefix("segbatch.")
    input_kind = kind(attrs["source"]["kind"])
    if (found := input_kind.source_problem(attrs["source"], "source")) is not None:
        return found
    if input_kind.unit_size is not None and input_kind.unit_size not in attrs:
        return f"{input_kind.unit_size} is missing"
    return None


# what every ledger entry may hold besides its kind's own fields (`Kind.entry_problem`): what the worker (and, for rasters, the stitch) recorded
ENTRY_COMMON: dict[str, Check] = {
    "run": string,
    "unit": _INT0,
    "node": string,
    "seconds": number,
    "stages": _SECONDS,
    "chunks": mapping_of(digest),
}


def entry_problem(entry: Any, kind: str, arrays: Mapping[str, tuple[int, ...]], needs_run: bool) -> str | None:
    """What is wrong with one ledger entry (a JSON object), or None.

    `arrays`: the store's arrays by name -> their chunk grid; every chunk key
    must name a chunk of one of them (never a path: "../x/0.0" names nothing).
    `needs_run`: the store lists its runs, so each entry must say which it was.
    """
    from segbatch.kinds import KINDS

    if not isinstance(entry, Mapping):
        return f"it is {json_type(entry)}, not an object"
    if (found := KINDS[kind].entry_problem(entry, "entry")) is not None:
        return found.removeprefix("entry.")
    if needs_run and "run" not in entry:
        return "run is missing"
    for key in entry.get("chunks", {}):
        if (found := chunk_key_problem(key, arrays)) is not None:
            return found
    return None


def chunk_key_problem(key: str, arrays: Mapping[str, tuple[int, ...]]) -> str | None:
    """A chunk key ("labels/3.0.0") must name a chunk inside the grid of one of the store's arrays."""
    match = _CHUNK_KEY.fullmatch(key)
    name = match.group(1) if match else None
    if match is None or name not in arrays:
        return f"chunk key {key!r} names no array of the store"
    index = tuple(int(i) for i in match.group(2).split("."))
    grid = arrays[str(name)]
    if len(index) != len(grid) or any(i >= n for i, n in zip(index, grid)):
        return f"chunk key {key!r} is outside {name}'s grid of {'x'.join(map(str, grid))} chunks"
    return None
