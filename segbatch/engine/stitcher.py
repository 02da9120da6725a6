"""Stitch while inferring: each output chunk of a raster is blended as soon as every tile that reaches it is done.

The driver hears of each finished tile (the pool hands back its ledger
entry); a chunk whose contributing tiles (its own and the neighbours whose
weights reach into it) are all done is ready, and ready chunks go, a few at a
time, to Ray stitch tasks that run beside the actors. Each task writes its
chunks (one writer per chunk) and records them in their tiles' ledger
entries (`stitched`), so a killed run resumes both the tiles and the chunks
still missing. A tile that every chunk it reaches has consumed is deleted
from `tiles/` at once (unless --keep-tiles), so `tiles/` holds about the
tile rows in flight, not the raster. When inference ends, what is left is the
stitch of the last row or so of chunks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from segbatch.errors import RunError, task_failure
from segbatch.stitch import StitchJob, stitch_chunks
from segbatch.store import drop_chunk
from segbatch.tiling import TilePlan

if TYPE_CHECKING:
    from zarr import Group

BATCH = 8  # ready chunks per task at most: chunks that become ready together mostly share their tiles (a task decodes each tile it keeps once)
TILE_ARRAYS = ("tiles/probs", "tiles/uncertainty")


class StitchSchedule:
    """Which output chunks are ready to blend as tiles finish, and which tiles they have used up: bookkeeping only (no Ray, no store).

    Chunk `cid` is tile `cid`'s core and blends its contributors (that tile and
    the neighbours whose weights reach into it), so it is ready once every one
    of them is done; a tile may leave tiles/ once every chunk it reaches is
    stitched. A skipped tile (all nodata) counts as done and has nothing in
    tiles/ to read or free.

    Args:
        tiles: the store's tile plan.
        done: the ledger's entries of the tiles already done (a resumed run);
            chunks recorded as stitched there are not handed out again, unless
            `again` (every chunk anew from kept tiles).
    """

    def __init__(self, tiles: TilePlan, done: Mapping[int, Mapping[str, Any]], again: bool = False) -> None:
        n = len(tiles)
        self.contributors = [tiles.contributors(cid) for cid in range(n)]  # chunk -> the tiles it blends
        self.reaches: list[list[int]] = [[] for _ in range(n)]  # tile -> the chunks its weights reach
        for cid, tids in enumerate(self.contributors):
            for tid in tids:
                self.reaches[tid].append(cid)
        self.waiting = [len(tids) for tids in self.contributors]  # chunk -> its tiles not done yet
        self.readers = [len(chunks) for chunks in self.reaches]  # tile -> the chunks it reaches not stitched yet
        self.stitched: set[int] = set() if again else {cid for cid, entry in done.items() if entry.get("stitched")}
        for cid in self.stitched:
            for tid in self.contributors[cid]:
                self.readers[tid] -= 1
        self.skipped: set[int] = set()  # tiles done with nothing in tiles/
        self.ready: list[int] = []  # chunks whose tiles are all done, not handed out yet, in the order they became ready
        self.live = self.peak = 0  # tiles written and not freed: now, and at most
        for tid, entry in sorted(done.items()):
            self.tile_done(tid, entry, written=self.readers[tid] > 0)  # a tile whose chunks are all stitched is gone already

    def tile_done(self, tid: int, entry: Mapping[str, Any], written: bool = True) -> None:
        """Tile `tid` is done (its ledger entry): the chunks it was the last one missing for become ready."""
        if entry.get("skipped"):
            self.skipped.add(tid)
        elif written:
            self.live += 1
            self.peak = max(self.peak, self.live)
        for cid in self.reaches[tid]:
            self.waiting[cid] -= 1
            if self.waiting[cid] == 0 and cid not in self.stitched:
                self.ready.append(cid)

    def take(self, count: int = BATCH) -> list[int]:
        """Hand out up to `count` of the chunks ready longest (in chunk order): each chunk is handed out once."""
        batch = sorted(self.ready[:count])
        del self.ready[:count]
        return batch

    def skipped_among(self, batch: Sequence[int]) -> frozenset[int]:
        """The skipped tiles the chunks of `batch` blend (their task reads nothing of them)."""
        return frozenset(tid for cid in batch for tid in self.contributors[cid] if tid in self.skipped)

    def stitched_now(self, batch: Sequence[int]) -> list[int]:
        """The chunks of `batch` are stitched: the tiles they used up (every chunk each reaches is stitched), which may be freed."""
        self.stitched.update(batch)
        freed = []
        for cid in batch:
            for tid in self.contributors[cid]:
                self.readers[tid] -= 1
                if self.readers[tid] == 0 and tid not in self.skipped:
                    self.live -= 1
                    freed.append(tid)
        return freed

    def left(self) -> int:
        """Chunks not stitched yet."""
        return len(self.contributors) - len(self.stitched)


class Stitcher:
    """The stitch of one raster store, fed tile by tile; `drain` finishes it.

    Its `schedule` says which chunks are ready and which tiles are used up;
    the Stitcher runs the tasks and deletes the tiles.

    Args:
        job: the store, its tile plan, the run and where its lease lives.
        root: the store, opened for writing (the driver deletes consumed tiles).
        done: the ledger's entries of the tiles already done (a resumed run);
            chunks recorded as stitched there are not stitched again, unless
            `again` (segbatch stitch: every chunk anew from kept tiles).
        keep_tiles: never delete tiles (--keep-tiles, segbatch stitch).
        check: the driver's fence, called before it deletes anything.
        cpus: the cluster's CPUs (how many tasks may be in flight).
    """

    def __init__(
        self, job: StitchJob, root: Group, done: Mapping[int, Mapping[str, Any]], keep_tiles: bool, check: Any, cpus: float, again: bool = False
    ) -> None:
        import ray

        self.job, self.root, self.keep, self.check = job, root, keep_tiles, check
        self.task = ray.remote(num_cpus=0, max_retries=3)(stitch_chunks)  # beside the actors: they hold the CPUs while inference goes on
        self.job_ref = ray.put(job)
        self.cpus = max(1, int(cpus))
        self.in_flight: dict[Any, list[int]] = {}
        self.inferring = True
        self.task_seconds = self.overlapped_seconds = 0.0
        self.tile_reads = 0
        self.tile_arrays: list[Any] | None = None
        self.schedule = StitchSchedule(job.tiles, done, again)

    def tile_done(self, tid: int, entry: Mapping[str, Any]) -> None:
        """A tile's worker finished: the chunks it completes are stitched soon (a task per BATCH ready chunks)."""
        self.schedule.tile_done(tid, entry)
        self._collect(block=False)
        while self.schedule.ready and len(self.in_flight) < self._limit():
            self._submit()  # a free slot takes what is ready (up to BATCH): the stitch keeps up, the tail stays short

    def drain(self, bar: Any = None) -> float:
        """Inference is over: stitch every chunk still to do; returns the wall seconds this took (the stitch after inference)."""
        self.inferring = False
        started = time.perf_counter()
        while self.schedule.ready or self.in_flight:
            while self.schedule.ready and len(self.in_flight) < self._limit():
                self._submit()
            count = self._collect(block=True)
            if bar is not None:
                bar.update(count)
        if self.left():
            raise RunError(f"{self.left()} output chunks were never stitched (their tiles are not all done); finish with --resume")
        return time.perf_counter() - started

    def figures(self) -> dict[str, Any]:
        """For the store's summary: task seconds, the share of them that ran while inference went on, how often tiles were read
        back, the most tiles kept at once."""
        overlap = self.overlapped_seconds / self.task_seconds if self.task_seconds > 0 else 0.0
        return {
            "stitch_task_seconds": round(self.task_seconds, 3),
            "stitch_overlap": round(overlap, 3),
            "stitch_tile_reads": self.tile_reads,
            "tiles_peak": self.schedule.peak,
        }

    def left(self) -> int:
        return self.schedule.left()

    # inside

    def _limit(self) -> int:
        """Tasks in flight: one per two CPUs while the actors run (at least one), one per CPU once they are done."""
        return self.cpus if not self.inferring else max(1, self.cpus // 2)

    def _submit(self) -> None:
        batch = self.schedule.take()
        self.in_flight[self.task.remote(self.job_ref, batch, self.schedule.skipped_among(batch))] = batch

    def _collect(self, block: bool) -> int:
        """Take the finished tasks (wait for one when `block`): their chunks are stitched, the tiles they used up deleted."""
        import ray
        from ray.exceptions import RayError

        if not self.in_flight:
            return 0
        refs = list(self.in_flight)
        finished, _ = ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        count = 0
        for ref in finished:
            batch = self.in_flight.pop(ref)
            try:
                done = ray.get(ref)
            except RayError as exc:  # the task raised, or its worker died more often than it is retried
                raise task_failure(exc, f"stitching chunks {batch[0]}..{batch[-1]}") from None
            self.task_seconds += done.seconds
            self.tile_reads += done.tile_reads
            if self.inferring:
                self.overlapped_seconds += done.seconds
            count += len(batch)
            for tid in self.schedule.stitched_now(batch):
                self._consumed(tid)
        return count

    def _consumed(self, tid: int) -> None:
        """Every chunk tile `tid` reaches is stitched: its part of tiles/ goes (unless kept), one chunk per array."""
        if self.keep:
            return
        self.check()  # the driver's writes are fenced too
        if self.tile_arrays is None:
            self.tile_arrays = [self.root[name] for name in TILE_ARRAYS if name in self.root]
        for arr in self.tile_arrays:
            drop_chunk(arr, (tid,) + (0,) * (arr.ndim - 1))  # chunk (tid, 0, ...) holds the whole tile (segbatch.tilestore)
