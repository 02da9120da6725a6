"""The Zarr v3 output store: layout, root attributes, and the ledger of finished units.

The driver creates every array and writes the metadata before any worker
starts (shapes are known from the source plan); workers only write whole
chunks of the units they own, then their unit's ledger entry. The ledger is a
string array with one chunk per unit, so its entries are written by their
units' workers alone, like any other chunk, and a store read back after a
crash says exactly which units are finished. It lives in the `_segbatch`
group, out of sight of `xarray.open_zarr` (which shows the root's arrays
only); stores made before kept it at the root, and are read as they are.

The metadata is what xarray, rioxarray and CF tools look for: `Conventions`,
`_FillValue` (255 for labels, NaN for floats, as xarray encodes attributes in
Zarr v3), `flag_values`/`flag_meanings` on labels, `units` on floats, and on
raster stores the GeoZarr `proj:`/`spatial:` keys beside a CF grid mapping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segbatch import __version__, kinds, location, schema
from segbatch.errors import InputError, RunError, StoreError
from segbatch.lease import LEASE_GROUP, built, read_lease
from segbatch.location import Location

PER_PIXEL = ("uncertainty", "entropy", "confidence", "mutual_information")
OPTIONAL_OUTPUTS = ("mutual_information", "probs")
NODATA_LABEL = 255
STATUSES = schema.STATUSES
LEDGER = "_segbatch/ledger"  # the ledger's path; stores made before it moved there have it at LEGACY_LEDGER
LEGACY_LEDGER = "ledger"
# Chunk files named c.<i>.<j>... in their array's folder (Zarr's default key encoding with "." between the indices), not
# c/<i>/<j>/...: there a video's chunk (8 frames, whole frame) is the only file in two folders made for it, three inodes and
# three mkdir calls per chunk written (8% of an actor's CPU at 360x480 on a 2-core VM's ext4; on NFS, round trips). The
# encoding is in each array's metadata: stores written before keep their nested chunks, and read, verify and resume so.
FLAT_CHUNK_KEYS: dict[str, Any] = {"chunk_key_encoding": {"name": "default", "separator": "."}}
COORDINATES = "coordinates"  # in the ledger's group's attributes: each coordinate array's digest, recorded when the store is made
DIGESTS_SINCE = (0, 3, 0)  # stores of this version on record every digest (chunks, coordinates): one that lacks any is damaged
CF_CONVENTIONS = "CF-1.10"
# a float _FillValue of NaN as xarray writes and reads it in a Zarr v3 attribute (base64 of the little-endian double):
# JSON has no NaN, and with Zarr v3 xarray masks by the _FillValue attribute, not by the array's fill_value
NAN_FILL_ATTR = base64.standard_b64encode(struct.pack("<d", float("nan"))).decode()


@dataclass(frozen=True)
class StoreLayout:
    """Shapes of a store's arrays, fixed before the run starts."""

    dims: tuple[str, ...]  # e.g. ("frame", "y", "x")
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    num_classes: int
    units: int
    outputs: tuple[str, ...] = ("labels", "uncertainty", "entropy", "confidence")
    float_dtype: str = "float16"
    coords: Mapping[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = field(default_factory=dict)  # name -> (dims, values, attrs)
    array_attrs: Mapping[str, Any] = field(default_factory=dict)  # added to every output array (e.g. grid_mapping)
    root_attrs: Mapping[str, Any] = field(default_factory=dict)  # top-level root attributes beside `segbatch` (e.g. GeoZarr's)
    extra: tuple[ArraySpec, ...] = ()  # worker-written arrays beyond the outputs (e.g. the raster tile store)


@dataclass(frozen=True)
class ArraySpec:
    """An array the driver creates for the workers to fill (one writer per shard, or per chunk when unsharded)."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    fill_value: Any
    dims: tuple[str, ...]
    shards: tuple[int, ...] | None = None
    scratch: bool = False  # removed once used (tiles/): encoded for speed, not size (`array_codecs`)


def create_store(path: Location, layout: StoreLayout, attrs: dict[str, Any], group: bool = False, consolidated: bool = True) -> Any:
    """Create the store with every array, coordinate and the root attributes (status "running").

    A store's root is built in place inside the folder its run's lease
    already holds (claimed before anything was written, see
    `segbatch.lease.claim`): its attributes say "creating" until every array
    exists, so a driver killed half-way never leaves a store that --resume
    would take for a whole one. A group of a job store (`segbatch.jobstore`,
    `group` True) has no lease of its own (the job's root holds the one lease
    that fences every write); locally it is built
    beside its place and renamed into it, and it is consolidated when the job
    finishes it (`consolidated` False: a reader without consolidated
    metadata still finds every array).
    """
    import zarr

    if group and not location.is_url(path):

        def build(building: Path) -> None:
            root = zarr.open_group(str(building), mode="w-", zarr_format=3, attributes=_root_attrs(layout, attrs, "running"))
            _create_arrays(root, layout, _class_names(attrs, layout.num_classes))
            if consolidated:
                consolidate(root)

        return build_aside(Path(path), build)
    if built(path):
        raise InputError(f"{path} exists; pass --resume to finish it or --overwrite to replace it")
    try:
        # mode "a": the folder is not empty (it holds the lease); that it holds no store was checked above, under the lease
        root = zarr.open_group(location.zarr_store(path, read_only=False), mode="a", zarr_format=3, attributes=_root_attrs(layout, attrs, "creating"))
        _create_arrays(root, layout, _class_names(attrs, layout.num_classes))
        root.attrs["segbatch"] = {**attrs, "status": "running"}  # only a finished store says running
        if consolidated:
            consolidate(root)
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None
    return root


def build_aside(path: Path, build: Callable[[Path], None]) -> Any:
    """A local group made whole or not at all: `build` fills a hidden folder beside `path`, which is then renamed into place.

    A driver killed half-way (or a Ctrl-C) leaves no group that a later run
    would take for a whole one; returns the group, open for writing.
    """
    import zarr

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot create {path}: folder {parent} does not exist")
    building = parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        build(building)
        os.rename(building, path)
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return zarr.open_group(str(path), mode="r+", zarr_format=3)


def _root_attrs(layout: StoreLayout, attrs: dict[str, Any], status: str) -> dict[str, Any]:
    """The root group's attributes: CF's `Conventions`, the layout's own (GeoZarr's keys), and segbatch's."""
    return {"Conventions": CF_CONVENTIONS, **layout.root_attrs, "segbatch": {**attrs, "status": status}}


def _class_names(attrs: Mapping[str, Any], count: int) -> list[str]:
    """The model's class names (attribute `model`), or class_0, class_1, ... when they are missing or do not fit."""
    names = attrs.get("model", {}).get("classes") if isinstance(attrs.get("model"), dict) else None
    if not isinstance(names, list) or len(names) != count:
        return [f"class_{i}" for i in range(count)]
    return [str(n) for n in names]


def flag_meanings(names: Sequence[str]) -> str:
    """CF flag_meanings: one word per class, blank-separated (characters outside CF's set, spaces included, become _)."""
    return " ".join(re.sub(r"[^A-Za-z0-9_.+@-]", "_", n.strip()) or f"class_{i}" for i, n in enumerate(names))


def _create_arrays(root: Any, layout: StoreLayout, class_names: Sequence[str]) -> None:
    coord_names = " ".join(n for n, (dims, _, _) in layout.coords.items() if dims not in ((n,),))  # x(x), y(y) are found by name
    common = ({"coordinates": coord_names} if coord_names else {}) | dict(layout.array_attrs)
    floats = {"_FillValue": NAN_FILL_ATTR, "units": "1"}  # every float output is dimensionless (entropy and MI: see _COMMENTS)
    for name in layout.outputs:
        if name == "labels":
            root.create_array(
                name,
                shape=layout.shape,
                chunks=layout.chunks,
                dtype="uint8",
                fill_value=NODATA_LABEL,
                dimension_names=list(layout.dims),
                **array_codecs("uint8"),
                **FLAT_CHUNK_KEYS,
                attributes={
                    **common,
                    "long_name": "class label (argmax of the mean softmax)",
                    "_FillValue": NODATA_LABEL,  # nodata, or not computed
                    "flag_values": list(range(layout.num_classes)),
                    "flag_meanings": flag_meanings(class_names),
                },
            )
        elif name == "probs":
            root.create_array(
                name,
                shape=(*layout.shape, layout.num_classes),
                chunks=(*layout.chunks, layout.num_classes),
                dtype=layout.float_dtype,
                fill_value=np.nan,
                dimension_names=[*layout.dims, "class"],
                **array_codecs(layout.float_dtype),
                **FLAT_CHUNK_KEYS,
                attributes={**common, **floats, "long_name": "mean class probabilities"},
            )
        else:
            root.create_array(
                name,
                shape=layout.shape,
                chunks=layout.chunks,
                dtype=layout.float_dtype,
                fill_value=np.nan,
                dimension_names=list(layout.dims),
                **array_codecs(layout.float_dtype),
                **FLAT_CHUNK_KEYS,
                attributes={**common, **floats, "long_name": _LONG_NAMES[name], **({"comment": _COMMENTS[name]} if name in _COMMENTS else {})},
            )
    coordinates: dict[str, str] = {}
    for name, (dims, values, coord_attrs) in layout.coords.items():
        # text as zarr v3's variable-length string type: numpy's fixed-width unicode has no v3 specification (zarr warns)
        dtype = str if values.dtype.kind in "UO" else values.dtype
        arr = root.create_array(name, shape=values.shape, chunks=values.shape, dtype=dtype, dimension_names=list(dims), attributes=coord_attrs)
        arr[...] = values
        coordinates[name] = coordinate_digest(arr)  # as it reads back, for `segbatch verify`
    for spec in layout.extra:
        root.create_array(
            spec.name,
            shape=spec.shape,
            chunks=spec.chunks,
            shards=spec.shards,
            dtype=spec.dtype,
            fill_value=spec.fill_value,
            dimension_names=list(spec.dims),
            **array_codecs(spec.dtype, spec.scratch),
            **FLAT_CHUNK_KEYS,
        )
    group, name = LEDGER.split("/")
    bookkeeping = {"description": "segbatch's bookkeeping (not results): the ledger of finished units", COORDINATES: coordinates}
    root.create_group(group, attributes=bookkeeping).create_array(
        name,
        shape=(layout.units,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        dimension_names=["unit"],
        attributes={"long_name": "finished work units (JSON per unit; empty = not finished)"},
    )


def array_codecs(dtype: Any, scratch: bool = False) -> dict[str, Any]:
    """An output array's compressor, chosen on encoding speed and size together (`python -m benchmarks.codecs`).

    Float maps (entropy, confidence, uncertainty, probabilities) are float16
    noise to a byte-wise compressor: Zstd barely shrinks them, slowly.
    Bit-shuffled, their sign and exponent bits line up and LZ4 compresses
    them 2-7x faster than Zstd did and to 0.8-0.9x its size. Labels are long
    runs: Zstd level 1 is as small as the default level and faster. A
    store's codecs are in its metadata, so stores written before read as
    they are.

    `scratch` arrays are read back once or a few times and then removed (a
    raster's tiles/): their uint8 probabilities go through LZ4, 1.7x faster to
    encode and 1.8x to decode than Zstd 1, at 1.4x its size on disk while
    they last (`bahamas_rgb.tif`, the demo model).
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    dtype = np.dtype(dtype)
    if scratch and dtype.kind != "f":
        return {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=dtype.itemsize)}
    if dtype.kind == "f":
        return {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=dtype.itemsize)}
    return {"compressors": ZstdCodec(level=1)}


def coordinate_digest(arr: Any, algorithm: str = schema.DIGEST_ALGORITHM) -> str:
    """A coordinate's digest, naming its algorithm: its values, dtype, shape and attributes (spatial_ref's attributes are its
    content: the CRS and the transform). Written once by the driver when the store is made; `segbatch verify` recomputes it."""
    values = np.asarray(arr[...])
    if values.dtype.kind in "OUST":  # text (image paths): its characters, not numpy's object pointers
        content = json.dumps([str(v) for v in values.ravel().tolist()]).encode()
    else:
        content = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    about = json.dumps([values.dtype.kind, list(values.shape), dict(arr.attrs)], sort_keys=True, default=str).encode()
    return f"{algorithm}:{_hash([content, about], algorithm)}"


def _hash(parts: Sequence[Any], algorithm: str) -> str:
    """The hex digest of the bytes of `parts` (buffers) with `algorithm`, one of schema.DIGEST_ALGORITHMS."""
    if algorithm == "xxh3-128":
        import xxhash

        xx = xxhash.xxh3_128()
        for part in parts:
            xx.update(part)
        return xx.hexdigest()
    if algorithm == schema.BLAKE3_DIGEST_ALGORITHM:
        import blake3

        b3 = blake3.blake3()
        for part in parts:
            b3.update(part)
        return b3.hexdigest(length=16)
    if algorithm == schema.BARE_DIGEST_ALGORITHM:
        b2 = hashlib.blake2b(digest_size=16)
        for part in parts:
            b2.update(part)
        return b2.hexdigest()
    raise StoreError(f"unknown digest algorithm {algorithm!r}")


def recorded_coordinates(root: Any) -> dict[str, str] | None:
    """The coordinate digests recorded when the store was made (None: a store made before they were), checked like the ledger."""
    group = LEDGER.split("/")[0]
    if group not in root or COORDINATES not in root[group].attrs:
        return None
    recorded = root[group].attrs[COORDINATES]
    problem = schema.mapping_of(schema.digest)(recorded, COORDINATES)
    if problem is None:
        arrays = {name for name, _ in root.arrays()}
        problem = next((f"{COORDINATES} names {name!r}, no array of the store" for name in recorded if name not in arrays), None)
    if problem is not None:
        raise StoreError(f"{_store_name(root)}: its bookkeeping is not what segbatch wrote ({problem}); the store was altered")
    return dict(recorded)


def ledger_array(root: Any) -> Any:
    """The store's ledger array: at LEDGER, or at the root in stores made before it moved (StoreError when there is none)."""
    for path in (LEDGER, LEGACY_LEDGER):
        if path in root:
            return root[path]
    raise StoreError(f"{_store_name(root)}: it has no ledger array; the store was altered")


def consolidate(root: Any) -> Any:
    """Refresh the consolidated metadata, so readers (xarray) open the store in one read and see current attributes.

    zarr warns that consolidation is not yet in the v3 spec; xarray and
    zarr-python both read it, and a reader without it still finds every array.
    The CLI filters that one warning for its whole process, once, when its
    root group runs (`segbatch.cli.main.CONSOLIDATION_WARNING`; not in a
    `catch_warnings` block here, which is not thread-safe: a job creates its
    groups in threads); a library caller decides for its own process.
    """
    import zarr

    return zarr.consolidate_metadata(root.store)


_LONG_NAMES = {
    "uncertainty": "Bayesian SegNet uncertainty: variance of the softmax samples, mean over classes",
    "entropy": "predictive entropy of the mean softmax (nats)",
    "confidence": "probability of the chosen label (max of the mean softmax), for calibration",
    "mutual_information": "BALD mutual information between prediction and weights (nats)",
}
# CF (UDUNITS) has no unit of information: entropy and mutual information are in nats (natural logarithm), units "1"
_COMMENTS = {
    "entropy": "in nats (natural logarithm); units 1 as CF has no unit of information",
    "mutual_information": "in nats (natural logarithm); units 1 as CF has no unit of information",
}


def open_store(path: Location, mode: Literal["r", "r+", "a", "w", "w-"] = "r") -> Any:
    """Open an existing segbatch store (a path, or a URL as a string), or say clearly why it is not one."""
    import zarr

    path = location.parse(path)
    if not location.exists(path):
        raise InputError(f"{path}: no such store")
    if not built(path):
        held = read_lease(path)
        if held is not None and not held.released and not held.stale():
            raise InputError(f"{path} is still being created by {held.holder()}; try again once it has started")
        if held is not None:
            raise InputError(f"{path} was never fully created (its run {held.run} is gone); `segbatch run ... --overwrite` starts it again")
    try:
        root = zarr.open_group(location.zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"{path} is not a Zarr v3 store ({type(exc).__name__})") from None
    if "segbatch" not in root.attrs:
        raise InputError(f"{path} is a Zarr store but not one segbatch wrote (no 'segbatch' attribute)")
    return root


def store_attrs(root: Any) -> dict[str, Any]:
    """The root `segbatch` attribute, checked: a tampered or damaged one is a one-line StoreError, never a crash later."""
    attrs = root.attrs.get("segbatch")
    where = _store_name(root)
    if not isinstance(attrs, dict):
        raise StoreError(f"{where}: its 'segbatch' attribute is a {type(attrs).__name__}, not a mapping; the store was altered")
    if attrs.get("kind") == "job":
        raise InputError(f"{where} is a job of many inputs: name one with --group NAME (segbatch info {where} lists them)")
    problem = schema.root_problem(attrs)
    if problem is None and attrs["status"] != "creating":  # a store still being made has not all its arrays yet
        problem = _layout_problem(root, attrs)
    if problem is not None:
        raise StoreError(f"{where}: its attributes are not what segbatch wrote ({problem}); the store was altered")
    return dict(attrs)


def _layout_problem(root: Any, attrs: Mapping[str, Any]) -> str | None:
    """Where the attributes and the arrays must agree (readers index one by the other): frames, images or raster size, units."""
    input_kind = kinds.kind(attrs["source"]["kind"])
    if "labels" not in root:
        return "it has no labels array"
    shape = tuple(root["labels"].shape)
    units = int(ledger_array(root).shape[0])
    expect, planned = input_kind.layout(attrs)
    if (problem := input_kind.coordinates_problem(root, attrs)) is not None:
        return problem
    if shape != expect:
        return f"labels is {'x'.join(map(str, shape))}, the source attributes say {'x'.join(map(str, expect))}"
    if planned != units:
        return f"the ledger has {units} units, the attributes plan {planned}"
    bad = [u for u in (attrs.get("verify") or {}).get("bad_units", []) if u >= units]
    if bad:
        return f"verify.bad_units names unit {bad[0]}, beyond the ledger's {units}"
    return None


def _store_name(root: Any) -> str:
    return str(getattr(root.store, "root", None) or getattr(root.store, "path", None) or "the store")


def update_attrs(root: Any, drop: tuple[str, ...] = (), **changes: Any) -> None:
    """Driver-only: change root attributes (status, problems, summary), removing the keys in `drop`."""
    try:
        root.attrs["segbatch"] = {k: v for k, v in {**store_attrs(root), **changes}.items() if k not in drop}
        consolidate(root)
    except OSError as exc:
        raise RunError(f"writing the store failed: {exc.strerror or exc}") from None


def clear_store(path: Location) -> None:
    """Empty a store this run holds the lease of, for --overwrite (or a creation that never finished): everything but the lease.

    The root's metadata goes first, so a deletion cut short (a crash, a kill)
    leaves a folder that is no store, only the lease (and leftovers the next
    --overwrite removes), never a store missing chunks. A folder that is not
    a segbatch store is refused, never emptied.
    """
    if built(path):
        open_store(path)  # raises unless it is ours: never delete a user's other data
    keep = LEASE_GROUP
    if location.is_url(path):
        fs, key = location.filesystem(str(path))
        key = key.rstrip("/")
        if fs.exists(f"{key}/zarr.json"):
            fs.rm_file(f"{key}/zarr.json")
        for child in fs.ls(key, detail=False):
            if str(child).rstrip("/").rsplit("/", 1)[-1] != keep:
                fs.rm(child, recursive=True)
        fs.invalidate_cache(key)
        return
    folder = Path(path)
    (folder / "zarr.json").unlink(missing_ok=True)
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def enclosing_store(path: Location) -> Location | None:
    """The segbatch store (or job) that `path` lies inside, if any: writing there belongs to that store's runs alone."""
    if location.is_url(path):
        text = str(path).rstrip("/")
        scheme, rest = text.split("://", 1)
        parts = rest.split("/")
        candidates: list[Location] = [f"{scheme}://{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
    else:
        candidates = list(Path(path).expanduser().resolve().parents)
    for candidate in candidates:
        if built(candidate) and _is_segbatch(candidate):
            return candidate
    return None


def _is_segbatch(path: Location) -> bool:
    import zarr

    try:
        return "segbatch" in zarr.open_group(location.zarr_store(path, read_only=True), mode="r", zarr_format=3).attrs
    except Exception:  # any other Zarr (or none readable): not ours
        return False


def finished_units(root: Any) -> dict[int, dict[str, Any]]:
    """Ledger entries of the units that finished: unit id -> the stats its worker recorded.

    Only entries written by this store's own runs count (attribute `runs`:
    the run that made it and each that resumed it): an entry a fenced-off
    run still managed to write is not a finished unit. Every entry is
    checked (`schema.entry_problem`: each field a reader uses, and chunk keys
    that name chunks of this store's arrays): a tampered one is a StoreError.
    """
    entries = ledger_array(root)[...]
    attrs = store_attrs(root)
    runs, kind, grids = attrs.get("runs"), attrs["source"]["kind"], chunk_grids(root)
    out = {}
    for i in np.flatnonzero(entries != ""):
        try:
            entry = json.loads(entries[i])
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise StoreError(f"{_store_name(root)}: ledger entry {int(i)} is not a JSON object; the store was altered (--overwrite to start again)")
        problem = schema.entry_problem(entry, kind, grids, needs_run=runs is not None)
        if problem is None and entry.get("unit", i) != i:
            problem = f"unit {entry['unit']} is recorded in row {int(i)}"
        if problem is not None:
            raise StoreError(
                f"{_store_name(root)}: ledger entry {int(i)} is not what segbatch wrote ({problem}); the store was altered (--overwrite to start again)"
            )
        if runs is None or entry.get("run") in runs:
            out[int(i)] = entry
    return out


def read_store(path: Location) -> tuple[Any, dict[str, Any], dict[int, dict[str, Any]]]:
    """A store opened for reading, with its attributes and its finished units, every field checked (a StoreError if altered)."""
    root = open_store(path)
    return root, store_attrs(root), finished_units(root)


def chunk_grids(root: Any) -> dict[str, tuple[int, ...]]:
    """The store's own arrays (not the ledger) by name -> their chunk grid: what a ledger entry's chunk keys may name."""
    return {name: tuple(-(-int(n) // int(c)) for n, c in zip(arr.shape, arr.chunks)) for name, arr in root.arrays() if name not in (LEGACY_LEDGER, "tiles")}


def check_ledger(root: Any, attrs: Mapping[str, Any]) -> None:
    """A store that says `complete` must have every unit in its ledger: otherwise it was altered and is refused."""
    if attrs.get("status") != "complete":
        return
    total = int(ledger_array(root).shape[0])
    done = finished_units(root)
    if len(done) < total:
        first = next(i for i in range(total) if i not in done)
        raise StoreError(
            f"{_store_name(root)} says complete but its ledger lacks {total - len(done)} of {total} units (first: {first}): "
            "it was altered; `segbatch run ... --resume` redoes them"
        )


def open_complete_store(path: Location, what: str) -> tuple[Any, dict[str, Any]]:
    """A store to read results from (export, audit): it must be complete, and consistent with its ledger."""
    root = open_store(path)
    attrs = store_attrs(root)
    if attrs["status"] == "damaged":
        raise StoreError(f"{path}: `segbatch verify` found damaged chunks; finish it with `segbatch run ... --resume` before {what}")
    if attrs["status"] != "complete":
        raise InputError(f"{path} is not complete (status {attrs['status']}); finish it with --resume before {what}")
    check_ledger(root, attrs)
    return root, attrs


def reopen_for_resume(path: Location, fingerprint: Mapping[str, Any], run: str) -> tuple[Any, dict[str, Any]]:
    """--resume: the store, checked (attributes, configuration), marked running and owned by `run` from now on."""
    root = open_store(path, mode="r+")
    attrs = store_attrs(root)
    check_resumable(attrs, fingerprint)
    runs = attrs.get("runs")
    if attrs["status"] == "damaged":
        coordinates = attrs.get("verify", {}).get("bad_coordinates", [])
        if coordinates:  # written once when the store was made: no unit of a resumed run writes them again
            raise StoreError(f"{path}: `segbatch verify` found its coordinates {', '.join(coordinates)} altered; --overwrite makes the store again")
        # `segbatch verify` found these units' chunks missing or altered: their ledger entries go, so they are redone
        entries = ledger_array(root)
        for unit in attrs.get("verify", {}).get("bad_units", []):
            entries[int(unit)] = ""
    update_attrs(root, drop=("verify",), status="running", **({"runs": [*runs, run]} if runs is not None else {}))
    return root, store_attrs(root)


def record_unit(root: Any, unit: int, stats: dict[str, Any]) -> None:
    """Worker: mark `unit` finished, after all of its chunks are written."""
    try:
        ledger = ledger_array(root)
        entry = np.array([json.dumps(stats, sort_keys=True)], dtype=ledger.dtype)
        if _entry_chunks(ledger):
            _put_chunk(ledger, (unit,), entry)  # never empty (the fill): 0.2 ms, 1.4 by setitem
        else:
            ledger[unit] = entry[0]
    except OSError as exc:
        raise RunError(f"writing the store failed: {exc.strerror or exc}") from None


def unit_entry(root: Any, unit: int) -> str:
    """Unit `unit`'s ledger entry as stored (JSON; "" when not finished), read alone."""
    ledger = ledger_array(root)
    return str(read_chunk(ledger, (unit,))[0] if _entry_chunks(ledger) else ledger[unit])


def _entry_chunks(ledger: Any) -> bool:
    """Whether each entry of `ledger` is a chunk of its own that `_put_chunk` and `read_chunk` can code (the usual case)."""
    return tuple(ledger.chunks) == (1,) and _encodes_itself(ledger)


def check_resumable(attrs: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    """Refuse --resume when the store was made by another configuration (or never finished being made), naming what differs."""
    if attrs.get("status") == "creating":
        raise InputError("cannot resume: the store was never fully created (its driver died while making it); use --overwrite to start again")
    old = attrs.get("config", {})
    diffs = [f"{k}: store has {old.get(k)!r}, now {fingerprint.get(k)!r}" for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
    if diffs:
        raise InputError(f"cannot resume: the store was made with another configuration ({'; '.join(diffs)}); use --overwrite to start again")


class OpenArrays(dict[str, Any]):
    """A store's arrays by name, each opened once: `group[name]` reads the array's metadata (a file, or a GET) every time.
    `name in` asks the store for a name not opened yet."""

    def __init__(self, root: Any) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Any:
        arr = self[name] = self.root[name]
        return arr

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.root


ENCODE_THREADS = 4  # a unit's arrays are encoded, hashed and written side by side: the codecs, BLAKE3 and file writes release the GIL
_encoders: ThreadPoolExecutor | None = None
_encoders_lock = threading.Lock()


def write_region(root: Any, region: Sequence[slice], outputs: Mapping[str, np.ndarray], side_by_side: bool = True) -> dict[str, str]:
    """Worker: write one unit's arrays into its own chunks; returns the digest of every chunk written (see `chunk_digests`).

    `root` is the store's group, or its `OpenArrays`. Each array is hashed
    first: chunks that are not all fill are then encoded and stored here
    (`_put_chunk`); an array with a fill chunk among them goes through Zarr,
    which deletes that chunk (an earlier attempt's chunk never survives).
    The arrays are written side by side on a few threads, unless not
    `side_by_side`: then one after the other in this thread, for a caller
    whose CPU is the limit rather than its wall time (handing work to threads
    costs CPU: for a stitched chunk's four arrays in a local store, 3.5-4.1 ms
    against 2.8 in one thread).
    """
    global _encoders
    with _encoders_lock:
        if side_by_side and _encoders is None:
            _encoders = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="segbatch-encode")
    digests: dict[str, str] = {}
    try:
        if side_by_side and _encoders is not None:
            for written in [_encoders.submit(_write_array, root[name], region, values) for name, values in outputs.items()]:
                digests.update(written.result())
        else:
            for name, values in outputs.items():
                digests.update(_write_array(root[name], region, values))
    except OSError as exc:
        raise RunError(f"writing the store failed: {exc.strerror or exc}") from None
    return digests


def _write_array(arr: Any, region: Sequence[slice], values: np.ndarray) -> dict[str, str]:
    """`write_region` for one array: the digests of its chunks, which are stored here unless one is all fill."""
    blocks = list(_chunk_blocks(arr, region, values))
    digests = {_chunk_key(arr, idx): digest(block, arr.fill_value) for idx, block in blocks}
    if FILL_DIGEST in digests.values() or not _encodes_itself(arr):
        arr[tuple(region)] = values
    else:
        for idx, block in blocks:
            _put_chunk(arr, idx, block)
    return digests


def is_local(group: Any) -> bool:
    """Whether a store (its group) is a folder on a local file system, as Zarr opened it."""
    from zarr.storage import LocalStore

    return isinstance(group.store, LocalStore)


def _encodes_itself(arr: Any) -> bool:
    """Whether `_put_chunk` and `read_chunk` can code `arr`'s chunks themselves: a Zarr v3 array whose every codec works
    synchronously (not sharded)."""
    from zarr.codecs import ShardingCodec

    meta = arr.metadata
    return meta.zarr_format == 3 and all(hasattr(c, "_encode_sync") and hasattr(c, "_decode_sync") and not isinstance(c, ShardingCodec) for c in meta.codecs)


def _put_chunk(arr: Any, idx: tuple[int, ...], block: np.ndarray) -> None:
    """Store chunk `idx` of `arr` (not all fill), `block` being its part inside the array: the bytes Zarr writes (tested),
    with one call per codec and the store written from this thread.

    Zarr's setitem does the same through its event loop, with a thread hop
    per codec and per store write: for a stitched chunk's four arrays, 6.3 ms
    of CPU against 2.2 here (1.05 of them encoding). An edge chunk is padded
    with the fill value to the chunk's shape, as Zarr pads it.
    """
    from zarr.core.buffer import default_buffer_prototype

    shape = tuple(arr.chunks)
    if block.shape != shape:
        whole = np.full(shape, arr.fill_value, arr.dtype)
        whole[tuple(slice(0, n) for n in block.shape)] = block
        block = whole
    inner = arr._async_array  # its metadata, configuration and store path: the parts setitem uses
    prototype = default_buffer_prototype()
    spec = inner.metadata.get_chunk_spec(idx, inner.config, prototype)
    contiguous: Any = np.ascontiguousarray(block)  # zarr's NDArrayLike protocol is narrower than numpy's stubs
    chunk: Any = prototype.nd_buffer.from_ndarray_like(contiguous)
    for codec in inner.metadata.codecs:
        chunk = codec._encode_sync(chunk, spec)
    path = _local_chunk(inner, idx)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")  # as Zarr names it: never a chunk key
        try:
            partial.write_bytes(chunk.as_buffer_like())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    else:
        from zarr.core.sync import sync

        sync((inner.store_path / inner.metadata.encode_chunk_key(idx)).set(chunk))


def drop_chunk(arr: Any, idx: tuple[int, ...]) -> None:
    """Delete chunk `idx` of `arr`, so it reads back as fill: its key removed (none is no error).

    Writing fill through Zarr's setitem does the same, after comparing the
    whole chunk with the fill value: for a 4096² raster's tile in tiles/
    (11 classes of 512² uint8, and its float16 uncertainty), 15 ms of the
    driver's CPU, against well under one here. A sharded array's chunk lives
    inside a shard, so it still goes through Zarr.
    """
    if not _encodes_itself(arr):
        bounds = chunk_region(arr, idx)
        arr[bounds] = np.full(tuple(b.stop - b.start for b in bounds), arr.fill_value, arr.dtype)
        return
    inner = arr._async_array
    path = _local_chunk(inner, idx)
    if path is not None:
        path.unlink(missing_ok=True)
    else:
        from zarr.core.sync import sync

        sync((inner.store_path / inner.metadata.encode_chunk_key(idx)).delete())


def _local_chunk(inner: Any, idx: tuple[int, ...]) -> Path | None:
    """Where chunk `idx` of an array (Zarr's async array) lies on a local file system; None in any other store."""
    from zarr.storage import LocalStore

    store = inner.store_path.store
    return Path(store.root) / inner.store_path.path / inner.metadata.encode_chunk_key(idx) if isinstance(store, LocalStore) else None


def read_chunk(arr: Any, idx: tuple[int, ...]) -> np.ndarray:
    """Chunk `idx` of `arr` as it reads back (clipped at the array's edge; fill where it was never written), decoded with the
    array's codecs, one call each, in this thread: a 4096² raster's tile (11 classes of 512² uint8) in 0.7 ms, against
    3.1 through Zarr's getitem (its event loop, and a copy into the output)."""
    from zarr.core.buffer import default_buffer_prototype

    bounds = chunk_region(arr, idx)
    if not _encodes_itself(arr):
        return np.asarray(arr[bounds])
    inner = arr._async_array
    prototype = default_buffer_prototype()
    path = _local_chunk(inner, idx)
    if path is not None:
        try:
            stored: Any = prototype.buffer.from_bytes(path.read_bytes())
        except FileNotFoundError:
            stored = None
    else:
        from zarr.core.sync import sync

        stored = sync((inner.store_path / inner.metadata.encode_chunk_key(idx)).get(prototype))
    if stored is None:
        return np.full(tuple(b.stop - b.start for b in bounds), arr.fill_value, arr.dtype)
    spec = inner.metadata.get_chunk_spec(idx, inner.config, prototype)
    codecs = list(inner.metadata.codecs)
    for codec in reversed(codecs):
        stored = codec._decode_sync(stored, spec)
    values = np.asarray(stored.as_numpy_array())
    return values[tuple(slice(0, b.stop - b.start) for b in bounds)]


FILL_DIGEST = schema.FILL_DIGEST  # a chunk equal to the fill value: zarr stores nothing for it


def chunk_digests(arr: Any, region: Sequence[slice], values: np.ndarray) -> dict[str, str]:
    """Digests of the chunks of `arr` that `region` covers, as they read back: `values` inside the region, fill outside.

    A unit owns whole chunks, so whatever of a chunk lies outside its region
    is fill (image padding, say). Keys are "array/i.j.k" chunk coordinates;
    a chunk that equals the fill value is recorded as FILL_DIGEST.
    """
    return {_chunk_key(arr, idx): digest(block, arr.fill_value) for idx, block in _chunk_blocks(arr, region, values)}


def _chunk_key(arr: Any, idx: Sequence[int]) -> str:
    return f"{arr.path}/{'.'.join(map(str, idx))}"


def _chunk_blocks(arr: Any, region: Sequence[slice], values: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Each chunk of `arr` that `region` covers, by index, as it reads back (clipped at the array's edge)."""
    full = _full_region(arr, region)
    values = np.broadcast_to(np.asarray(values, dtype=arr.dtype), tuple(s.stop - s.start for s in full))
    for index in np.ndindex(*(((s.stop - 1) // c) - (s.start // c) + 1 for s, c in zip(full, arr.chunks))):
        idx = tuple(s.start // c + i for s, c, i in zip(full, arr.chunks, index))
        bounds = chunk_region(arr, idx)
        inner = tuple(slice(max(b.start, s.start), min(b.stop, s.stop)) for b, s in zip(bounds, full))
        part = values[tuple(slice(i.start - s.start, i.stop - s.start) for i, s in zip(inner, full))]
        if inner == bounds:  # the region covers the whole chunk (the usual case): no copy
            block = part
        else:
            block = np.full(tuple(b.stop - b.start for b in bounds), arr.fill_value, arr.dtype)
            block[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, bounds))] = part
        yield idx, block


def digest(block: np.ndarray, fill_value: Any, algorithm: str = schema.DIGEST_ALGORITHM) -> str:
    """A chunk's digest: FILL_DIGEST when it is all fill, else a 128-bit hash of its bytes (lossless codecs keep them) named
    by its algorithm, "xxh3-128:<hex>" (earlier stores recorded "blake3-128:<hex>" and "blake2b-128:<hex>": `digest_algorithm`)."""
    first = block.flat[0] if block.size else fill_value  # most chunks are not fill: their first element says so without a scan
    if isinstance(fill_value, (float, np.floating)) and np.isnan(fill_value):
        is_fill = bool(np.isnan(first)) and bool(np.isnan(block).all())
    else:
        is_fill = bool(first == fill_value) and bool((block == fill_value).all())
    if is_fill:
        return FILL_DIGEST
    return f"{algorithm}:{_hash([np.ascontiguousarray(block).reshape(-1).view(np.uint8)], algorithm)}"


def digest_algorithm(recorded: str) -> str:
    """The algorithm a recorded digest was made with: the one it names (stores before 0.3.0 recorded bare BLAKE2b-128 hex)."""
    return recorded.split(":", 1)[0] if ":" in recorded else schema.BARE_DIGEST_ALGORITHM


def same_digest(found: str, recorded: str) -> bool:
    """Whether a digest just computed (with `digest_algorithm(recorded)`) is the one recorded, bare or named."""
    return found == recorded or (":" not in recorded and found == f"{schema.BARE_DIGEST_ALGORITHM}:{recorded}")


def digests_required(attrs: Mapping[str, Any]) -> bool:
    """Whether the store's version records every digest (chunks in each ledger entry, coordinates): then a missing one is damage."""
    return schema.version_tuple(attrs["version"]) >= DIGESTS_SINCE


def chunk_region(arr: Any, index: Sequence[int]) -> tuple[slice, ...]:
    """The array region of chunk `index` (clipped at the array's edge)."""
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, arr.chunks, arr.shape))


def region_chunk_keys(arr: Any, region: Sequence[slice]) -> list[str]:
    """The keys ("name/i.j.k") of the chunks of `arr` that `region` covers: those `chunk_digests` records for a write of it."""
    import itertools

    ranges = [range(s.start // c, (s.stop - 1) // c + 1) if s.stop > s.start else range(0) for s, c in zip(_full_region(arr, region), arr.chunks)]
    return [f"{arr.path}/{'.'.join(map(str, idx))}" for idx in itertools.product(*ranges)]


def _full_region(arr: Any, region: Sequence[slice]) -> tuple[slice, ...]:
    """`region` with every axis explicit (start and stop), missing trailing axes whole."""
    region = tuple(region) + (slice(None),) * (arr.ndim - len(region))
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, arr.shape))


def base_attrs(source: dict[str, Any], model: dict[str, Any], samples: int, seed: int, config: dict[str, Any], run: str) -> dict[str, Any]:
    """The root `segbatch` attribute of DESIGN.md, before the run starts (`runs`: the runs whose ledger entries count)."""
    source, model = {**source, "path": location.redact(str(source["path"]))}, {**model, "path": location.redact(str(model.get("path", "")))}
    return {"version": __version__, "source": source, "model": model, "samples": samples, "seed": seed, "config": config, "problems": [], "runs": [run]}
