"""`segbatch verify`: recompute every chunk's digest against the ledger, as a scrub does, in bounded memory.

Each unit's ledger entry lists the digest of every chunk it wrote (or that
the chunk equals the fill value, which Zarr does not store). Verify reads
the chunks back on a few threads, one chunk per thread at a time, and names
each missing or altered one with the unit that owns it. A writable store
that fails is marked `damaged` with its bad units, so `segbatch run ...
--resume` redoes exactly those, and readers (export, audit) refuse it until
then.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from segbatch.batching import batched
from segbatch.lease import read_lease
from segbatch.location import Location
from segbatch.store import FILL_DIGEST, chunk_region, digest, finished_units, ledger_array, open_store, store_attrs, update_attrs

READ_THREADS = 8
BATCH = 256  # chunks handed to the threads at a time: memory stays at a few chunks per thread


@dataclass
class VerifyReport:
    """What `verify` found."""

    store: str
    units: int = 0
    chunks: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)  # {"unit", "chunk", "problem": missing | altered (also: undecodable)}
    unfinished: list[int] = field(default_factory=list)  # units a complete store's ledger lacks
    unchecked_units: int = 0  # ledger entries without digests (stores written before segbatch recorded them)
    seconds: float = 0.0
    marked: str | None = None  # the status written to the store, if any

    @property
    def ok(self) -> bool:
        return not self.bad and not self.unfinished

    @property
    def bad_units(self) -> list[int]:
        return sorted({b["unit"] for b in self.bad} | set(self.unfinished))

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "units": self.units,
            "chunks_checked": self.chunks,
            "bad_chunks": self.bad,
            "unfinished_units": self.unfinished,
            "bad_units": self.bad_units,
            "unchecked_units": self.unchecked_units,
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
    report = VerifyReport(store=str(path), units=int(ledger_array(root).shape[0]))
    if attrs["status"] in ("complete", "damaged"):
        report.unfinished = [u for u in range(report.units) if u not in ledger]
    report.unchecked_units = sum(1 for entry in ledger.values() if "chunks" not in entry)
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
            found = digest(arr[chunk_region(arr, [int(i) for i in index.split(".")])], arr.fill_value)
        except Exception:  # a chunk that no longer decodes (truncated, overwritten with other bytes) is altered
            return {"unit": unit, "chunk": key, "problem": "altered"}
        if found == expected:
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
        root = open_store(path, mode="r+")
        update_attrs(root, status=new, verify={"checked": time.time(), "bad_units": report.bad_units})
    except Exception:  # a read-only store: the report alone says what is wrong
        return
    report.marked = new
