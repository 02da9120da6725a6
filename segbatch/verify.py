"""`segbatch verify`: recompute every chunk's digest against the ledger, as a scrub does, in bounded memory.

Each unit's ledger entry lists the digest of every chunk it wrote (or that
the chunk equals the fill value, which Zarr does not store), and the store's
bookkeeping the digest of every coordinate (time, x, y, spatial_ref, ...)
made with it. Verify reads the chunks back on a few threads, one chunk per
thread at a time, and names each missing or altered one with the unit that
owns it. In a store whose version records every digest, an entry or a
coordinate without one is damage too. A store that is not complete (units
not finished, a run that failed) never passes. A writable store that fails
is marked `damaged` with its bad units, so `segbatch run ... --resume` redoes
exactly those, and readers (export, audit) refuse it until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from segbatch import kinds
from segbatch.batching import batched
from segbatch.lease import Lease, read_lease
from segbatch.location import Location
from segbatch.owner import Owner
from segbatch.store import (
    FILL_DIGEST,
    LEGACY_LEDGER,
    PER_PIXEL,
    chunk_region,
    coordinate_digest,
    digest,
    digest_algorithm,
    digests_required,
    finished_units,
    ledger_array,
    open_store,
    recorded_coordinates,
    region_chunk_keys,
    same_digest,
    store_attrs,
    update_attrs,
)

READ_THREADS = 8
BATCH = 256  # chunks handed to the threads at a time: memory stays at a few chunks per thread


@dataclass
class VerifyReport:
    """What `verify` found."""

    store: str
    status: str = "complete"  # the store's status: a store that is not complete (running, stopped, failed) never passes
    units: int = 0
    chunks: int = 0
    coordinates: int = 0  # coordinate arrays checked against the digests recorded when the store was made
    bad: list[dict[str, Any]] = field(default_factory=list)  # {"unit", "chunk", "problem"}; a coordinate's has unit None
    unfinished: list[int] = field(default_factory=list)  # units the ledger lacks
    unchecked_units: int = 0  # ledger entries without digests (stores written before segbatch recorded them)
    unchecked_coordinates: int = 0  # coordinates without digests (stores made before segbatch recorded them)
    seconds: float = 0.0
    marked: str | None = None  # the status written to the store, if any

    @property
    def complete(self) -> bool:
        """The run that wrote the store finished it (a damaged store was complete until verify found bad chunks)."""
        return self.status in ("complete", "damaged")

    @property
    def ok(self) -> bool:
        return not self.bad and not self.unfinished and self.complete

    @property
    def bad_units(self) -> list[int]:
        return sorted({b["unit"] for b in self.bad if b["unit"] is not None} | set(self.unfinished))

    @property
    def bad_coordinates(self) -> list[str]:
        return sorted(b["chunk"] for b in self.bad if b["unit"] is None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "status": self.status,
            "units": self.units,
            "chunks_checked": self.chunks,
            "coordinates_checked": self.coordinates,
            "bad_chunks": [b for b in self.bad if b["unit"] is not None],
            "bad_coordinates": [b for b in self.bad if b["unit"] is None],
            "unfinished_units": self.unfinished,
            "bad_units": self.bad_units,
            "unchecked_units": self.unchecked_units,
            "unchecked_coordinates": self.unchecked_coordinates,
            "seconds": round(self.seconds, 3),
            "marked": self.marked,
        }


def verify_store(path: Location, threads: int = READ_THREADS, lease: Location | None = None) -> VerifyReport:
    """Check every recorded chunk digest of the store at `path`; mark it damaged (or whole again) when it is writable and no run holds it.

    `lease`: where the lease of the run that may hold it lives (a job's
    groups: the job's root; default the store itself).
    """
    started = time.perf_counter()
    root = open_store(path)
    attrs = store_attrs(root)
    ledger = finished_units(root)
    report = VerifyReport(store=str(path), status=attrs["status"], units=int(ledger_array(root).shape[0]))
    report.unfinished = [u for u in range(report.units) if u not in ledger]
    required = digests_required(attrs)
    owned = _owned_chunks(root, attrs) if required else None
    for unit, entry in sorted(ledger.items()):
        if "chunks" in entry and owned is not None:  # this version records a digest of every chunk a unit wrote
            report.bad.extend({"unit": unit, "chunk": key, "problem": "has no digest"} for key in owned(unit, entry) if key not in entry["chunks"])
        elif required:  # this version records every unit's digests: an entry without them was altered
            report.bad.append({"unit": unit, "chunk": "", "problem": "has no digests"})
        elif "chunks" not in entry:
            report.unchecked_units += 1
    _check_coordinates(root, required, report)
    arrays: dict[str, Any] = {}

    def check(item: tuple[int, str, str]) -> dict[str, Any] | None:
        unit, key, expected = item
        name, index = key.rsplit("/", 1)
        arr = arrays.get(name)
        if arr is None:
            arr = arrays[name] = root[name] if name in root else None
        if arr is None:
            return {"unit": unit, "chunk": key, "problem": "missing"}
        try:
            found = digest(arr[chunk_region(arr, [int(i) for i in index.split(".")])], arr.fill_value, digest_algorithm(expected))
        except Exception:  # a chunk that no longer decodes (truncated, overwritten with other bytes) is altered
            return {"unit": unit, "chunk": key, "problem": "altered"}
        if same_digest(found, expected):
            return None
        return {"unit": unit, "chunk": key, "problem": "missing" if found == FILL_DIGEST else "altered"}

    with ThreadPoolExecutor(max(1, threads)) as pool:
        recorded = ((u, k, d) for u, entry in sorted(ledger.items()) for k, d in sorted(entry.get("chunks", {}).items()))
        for batch in batched(recorded, BATCH):
            report.chunks += len(batch)
            report.bad.extend(b for b in pool.map(check, batch) if b is not None)
    report.seconds = time.perf_counter() - started
    _mark(path, attrs, report, lease if lease is not None else path)
    return report


def _owned_chunks(root: Any, attrs: dict[str, Any]) -> Callable[[int, dict[str, Any]], list[str]]:
    """unit, its ledger entry -> the keys of the output chunks it wrote, from the region it owns (as the store's kind says:
    a video unit's frames, an image's rows and columns, a raster tile's core once stitched)."""
    source = attrs["source"]
    outputs = [root[name] for name in ("labels", "probs", *PER_PIXEL) if name in root]
    regions = kinds.kind(source["kind"]).owned_regions(root, source)

    def owned(unit: int, entry: dict[str, Any]) -> list[str]:
        return [key for region in regions(unit, entry) for arr in outputs for key in region_chunk_keys(arr, region)]

    return owned


def _check_coordinates(root: Any, required: bool, report: VerifyReport) -> None:
    """Every coordinate array (time; x, y, spatial_ref; an image stack's path, height, width) against its recorded digest.

    The coordinates are the store's arrays besides the outputs; a store whose
    version records their digests must have one for each.
    """
    recorded = recorded_coordinates(root)
    outputs = {"labels", "probs", *PER_PIXEL, LEGACY_LEDGER}
    names = sorted(name for name, _ in root.arrays() if name not in outputs)
    if recorded is None and not required:
        report.unchecked_coordinates = len(names)
        return
    recorded = recorded or {}
    for name in sorted(set(names) | set(recorded)):
        report.coordinates += 1
        if name not in recorded:
            problem: str | None = "has no digest" if required else None
        else:
            try:
                problem = None if coordinate_digest(root[name], digest_algorithm(recorded[name])) == recorded[name] else "altered"
            except Exception:  # a coordinate that no longer decodes is altered
                problem = "altered"
        if problem is None and name not in recorded:
            report.unchecked_coordinates += 1
        elif problem is not None:
            report.bad.append({"unit": None, "chunk": name, "problem": problem})


def _mark(path: Location, attrs: dict[str, Any], report: VerifyReport, lease: Location) -> None:
    """Record the outcome in the store when it can be written and is not in a live run's hands (verify stays read-only otherwise)."""
    held = read_lease(lease)
    if held is not None and not held.released and not held.stale():
        return
    status = attrs["status"]
    if report.ok and status != "damaged":
        return
    if not report.ok and status not in ("complete", "damaged"):
        return  # an unfinished run's store: --resume already redoes what its ledger lacks
    new = "damaged" if not report.ok else "complete"
    try:
        with Owner(lease, Lease.new()) as owner:  # the mark is a write like any other: made while this command holds the store
            root = owner.open(path)
            update_attrs(root, status=new, verify={"checked": time.time(), "bad_units": report.bad_units, "bad_coordinates": report.bad_coordinates})
    except Exception:  # a read-only store, or a run took it meanwhile: the report alone says what is wrong
        return
    report.marked = new
