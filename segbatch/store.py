"""The Zarr v3 output store: layout, root attributes, and the ledger of finished units.

The driver creates every array and writes the metadata before any worker
starts (shapes are known from the source plan); workers only write whole
chunks of the units they own, then their unit's ledger entry. The ledger is a
string array with one chunk per unit, so its entries are written by their
units' workers alone, like any other chunk, and a store read back after a
crash says exactly which units are finished.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import __version__, location
from segbatch.errors import InputError, RunError
from segbatch.location import Location

PER_PIXEL = ("uncertainty", "entropy", "confidence", "mutual_information")
OPTIONAL_OUTPUTS = ("mutual_information", "probs")
NODATA_LABEL = 255


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


def create_store(path: Location, layout: StoreLayout, attrs: dict[str, Any]) -> Any:
    """Create the store with every array, coordinate and the root attributes (status "running").

    A local store is built beside its final place and renamed into it, so a
    driver killed half-way never leaves a store that --resume would take for a
    whole one. Object stores have no atomic rename: there the store is made in
    place with status "creating", and only a finished one says "running".
    """
    import zarr

    if location.exists(path):
        raise InputError(f"{path} exists; pass --resume to finish it or --overwrite to replace it")
    if location.is_url(path):
        root = zarr.open_group(location.zarr_store(path, read_only=False), mode="w-", zarr_format=3, attributes={"segbatch": {**attrs, "status": "creating"}})
        _create_arrays(root, layout)
        update_attrs(root, status="running")
        return root
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot create {path}: folder {parent} does not exist")
    building = parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        root = zarr.open_group(str(building), mode="w-", zarr_format=3, attributes={"segbatch": {**attrs, "status": "running"}})
        _create_arrays(root, layout)
        consolidate(root)
        os.rename(building, path)
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return zarr.open_group(str(path), mode="r+", zarr_format=3)


def _create_arrays(root: Any, layout: StoreLayout) -> None:
    coord_names = " ".join(n for n, (dims, _, _) in layout.coords.items() if dims not in ((n,),))  # x(x), y(y) are found by name
    common = ({"coordinates": coord_names} if coord_names else {}) | dict(layout.array_attrs)
    for name in layout.outputs:
        if name == "labels":
            root.create_array(
                name,
                shape=layout.shape,
                chunks=layout.chunks,
                dtype="uint8",
                fill_value=NODATA_LABEL,
                dimension_names=list(layout.dims),
                attributes={
                    **common,
                    "long_name": "class label (argmax of the mean softmax)",
                    "flag_values": NODATA_LABEL,
                    "flag_meanings": "nodata_or_not_computed",
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
                attributes={**common, "long_name": "mean class probabilities"},
            )
        else:
            root.create_array(
                name,
                shape=layout.shape,
                chunks=layout.chunks,
                dtype=layout.float_dtype,
                fill_value=np.nan,
                dimension_names=list(layout.dims),
                attributes={**common, "long_name": _LONG_NAMES[name]},
            )
    for name, (dims, values, coord_attrs) in layout.coords.items():
        # text as zarr v3's variable-length string type: numpy's fixed-width unicode has no v3 specification (zarr warns)
        dtype = str if values.dtype.kind in "UO" else values.dtype
        arr = root.create_array(name, shape=values.shape, chunks=values.shape, dtype=dtype, dimension_names=list(dims), attributes=coord_attrs)
        arr[...] = values
    for spec in layout.extra:
        root.create_array(
            spec.name, shape=spec.shape, chunks=spec.chunks, shards=spec.shards, dtype=spec.dtype, fill_value=spec.fill_value, dimension_names=list(spec.dims)
        )
    root.create_array(
        "ledger",
        shape=(layout.units,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        dimension_names=["unit"],
        attributes={"long_name": "finished work units (JSON per unit; empty = not finished)"},
    )


def consolidate(root: Any) -> Any:
    """Refresh the consolidated metadata, so readers (xarray) open the store in one read and see current attributes.

    zarr warns that consolidation is not yet in the v3 spec; xarray and
    zarr-python both read it, and a reader without it still finds every array.
    """
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        return zarr.consolidate_metadata(root.store)


_LONG_NAMES = {
    "uncertainty": "Bayesian SegNet uncertainty: variance of the softmax samples, mean over classes",
    "entropy": "predictive entropy of the mean softmax (nats)",
    "confidence": "probability of the chosen label (max of the mean softmax), for calibration",
    "mutual_information": "BALD mutual information between prediction and weights (nats)",
}


def open_store(path: Location, mode: str = "r") -> Any:
    """Open an existing segbatch store (a path, or a URL as a string), or say clearly why it is not one."""
    import zarr

    path = location.parse(path)
    if not location.exists(path):
        raise InputError(f"{path}: no such store")
    try:
        root = zarr.open_group(location.zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"{path} is not a Zarr v3 store ({type(exc).__name__})") from None
    if "segbatch" not in root.attrs:
        raise InputError(f"{path} is a Zarr store but not one segbatch wrote (no 'segbatch' attribute)")
    return root


def store_attrs(root: Any) -> dict[str, Any]:
    return dict(root.attrs["segbatch"])


def update_attrs(root: Any, drop: tuple[str, ...] = (), **changes: Any) -> None:
    """Driver-only: change root attributes (status, problems, summary), removing the keys in `drop`."""
    root.attrs["segbatch"] = {k: v for k, v in {**store_attrs(root), **changes}.items() if k not in drop}
    consolidate(root)


def remove_store(path: Location) -> None:
    """Delete a store for --overwrite, refusing anything that is not a segbatch store."""
    if not location.exists(path):
        return
    open_store(path)  # raises unless it is ours: never delete a user's other data
    location.remove_tree(path)


def finished_units(root: Any) -> dict[int, dict[str, Any]]:
    """Ledger entries of the units that finished: unit id -> the stats its worker recorded."""
    entries = root["ledger"][...]
    return {int(i): json.loads(entries[i]) for i in np.flatnonzero(entries != "")}


def record_unit(root: Any, unit: int, stats: dict[str, Any]) -> None:
    """Worker: mark `unit` finished, after all of its chunks are written."""
    root["ledger"][unit] = json.dumps(stats, sort_keys=True)


def check_resumable(attrs: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    """Refuse --resume when the store was made by another configuration (or never finished being made), naming what differs."""
    if attrs.get("status") == "creating":
        raise InputError("cannot resume: the store was never fully created (its driver died while making it); use --overwrite to start again")
    old = attrs.get("config", {})
    diffs = [f"{k}: store has {old.get(k)!r}, now {fingerprint.get(k)!r}" for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
    if diffs:
        raise InputError(f"cannot resume: the store was made with another configuration ({'; '.join(diffs)}); use --overwrite to start again")


def write_region(root: Any, region: Sequence[slice], outputs: Mapping[str, np.ndarray]) -> None:
    """Worker: write one unit's arrays into its own chunks."""
    try:
        for name, values in outputs.items():
            root[name][tuple(region)] = values
    except OSError as exc:
        raise RunError(f"writing the store failed: {exc.strerror or exc}") from None


def sample_values(arr: Any, count: int = 16) -> np.ndarray:
    """Finite values of up to `count` chunks spread evenly over an array: a cheap, deterministic look at its distribution.

    Frame and image stacks are sampled along their first axis (each sample the
    chunk at the origin of a frame or image, which always holds pixels); a 2-D
    raster over its whole chunk grid, so a mosaic's nodata margins do not
    decide the sample.
    """
    grid = tuple(-(-n // c) for n, c in zip(arr.shape, arr.chunks))
    total = int(np.prod(grid[:1] if arr.ndim == 3 else grid))
    values = []
    for flat in np.unique(np.linspace(0, max(0, total - 1), count).astype(np.int64)):
        index = (int(flat), *([0] * (arr.ndim - 1))) if arr.ndim == 3 else np.unravel_index(int(flat), grid)
        region = tuple(slice(int(i) * c, (int(i) + 1) * c) for i, c in zip(index, arr.chunks))
        block = np.asarray(arr[region], np.float32).ravel()
        values.append(block[np.isfinite(block)])
    return np.concatenate(values) if values else np.zeros(0, np.float32)


def describe_store(path: Location) -> dict[str, Any]:
    """The summary `segbatch info STORE` prints (and `--json` emits)."""
    root = open_store(path)
    attrs = store_attrs(root)
    arrays = {}
    for name, arr in root.arrays():
        if name == "ledger":
            continue
        arrays[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks), "dims": list(arr.metadata.dimension_names or ())}
    done = int((root["ledger"][...] != "").sum())
    return {
        "kind": "store",
        "path": str(path),
        "version": attrs.get("version"),
        "status": attrs.get("status"),
        "source": attrs.get("source"),
        "model": attrs.get("model"),
        "samples": attrs.get("samples"),
        "seed": attrs.get("seed"),
        "units": {"finished": done, "total": int(root["ledger"].shape[0])},
        "arrays": arrays,
        "problems": attrs.get("problems", []),
        "summary": attrs.get("summary"),
    }


def base_attrs(source: dict[str, Any], model: dict[str, Any], samples: int, seed: int, config: dict[str, Any]) -> dict[str, Any]:
    """The root `segbatch` attribute of DESIGN.md, before the run starts."""
    return {"version": __version__, "source": source, "model": model, "samples": samples, "seed": seed, "config": config, "problems": []}
