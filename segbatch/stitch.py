"""The stitcher: blend overlapping tiles back into full-resolution rasters, one writer per output chunk.

Each output chunk is one tile's core; a stitch task takes a few chunks whose
tiles are all done, reads every tile whose weights reach them once
(neighbouring chunks share most of their tiles), blends the probabilities
with the border-aware weights of `segbatch.tiling`, takes the argmax after
blending, and writes each chunk, memory bounded by the tiles of one task.
When the tasks run (while inference goes on) is the engine's business:
`segbatch.engine.stitcher`.

The blend itself (`blend_chunk`) is a pure function of a chunk's window and
the tiles that reach it, knowing nothing of Zarr, so a stitcher that blends
tiles as they arrive can share it.

Pure: it imports neither the engine nor the model (a stitch task never loads
torch); a `StitchJob` says all it needs.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from segbatch.lru import LruCache
from segbatch.owner import Fence
from segbatch.store import NODATA_LABEL, OpenArrays, is_local, read_chunk, record_unit, unit_entry, write_region
from segbatch.tilestore import PROB_NODATA, PROB_SCALE
from segbatch.tiling import Tile, TilePlan, Window, blend_weights

TILE_CACHE_BYTES = 256 << 20  # decoded tiles a process keeps across its stitch tasks (about 75 tiles of 512² with 11 classes)
TILE_CACHE_TILES = 12  # kept whatever their size: the 3x3 around a chunk plus the next column
_TINY = np.finfo(np.float32).tiny  # added to p before the log, so p log p is 0 at p = 0 (its limit), not NaN


@dataclass(frozen=True)
class StitchJob:
    """What a stitch task needs: the store with a complete tiles/, its tile plan, and the run that owns it.

    The output arrays (their dtypes, whether uncertainty and confidence exist)
    are read from the store itself.
    """

    store: str  # absolute location: a path or a URL
    tiles: TilePlan  # the plan tiles/ was written with: tile i's core is output chunk i
    run: str  # the run holding the lease: every write is fenced by it
    lease: str = ""  # where that lease lives ("" = the store itself; a many-input job's groups share its root's)
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)  # location.storage_variables(): never printed

    @property
    def fence(self) -> Fence:
        """What every write of a stitch task passes (segbatch.owner)."""
        return Fence(self.lease or self.store, self.run)


class TileOutput(NamedTuple):
    """One tile's stored outputs, as the blend takes them (arrays may be padded beyond the window)."""

    tile: Tile
    probs: np.ndarray  # (classes, >= window height, >= window width) uint8, round(p x PROB_SCALE), PROB_NODATA outside the data
    uncertainty: np.ndarray | None  # (>= window height, >= window width) float, NaN outside the data


@dataclass(frozen=True)
class TileWeights:
    """A tile's blend weights and the part of its window where they are > 0 (the rest adds nothing)."""

    weights: np.ndarray  # (window height, window width) float32, read-only: shared by every tile of this geometry
    reach: Window  # relative to the window


class BlendCache:
    """What consecutive blends reuse: the weights of each tile geometry, and float32 work buffers.

    A plan has a handful of geometries (inner, edge, corner tiles), and the
    weights depend only on the window's size and where the core sits in it
    (`axis_weights` works on exact half-integer pixel centres), so each is
    computed once and shared read-only. Fresh chunk-sized buffers would cost
    more in page faults than the blend's arithmetic, so they are kept too:
    one cache serves one thread.
    """

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self._weights: dict[tuple[int, int, int, int, int, int], TileWeights] = {}
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def geometries(self) -> int:
        """How many weight arrays were computed."""
        return len(self._weights)

    def weights(self, tile: Tile) -> TileWeights:
        win, core = tile.window, tile.core
        key = (win.height, win.width, core.row - win.row, core.col - win.col, core.height, core.width)
        found = self._weights.get(key)
        if found is None:
            weights = blend_weights(tile, self.overlap)
            weights.setflags(write=False)
            rows, cols = np.flatnonzero(weights.any(axis=1)), np.flatnonzero(weights.any(axis=0))
            reach = Window(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
            found = self._weights[key] = TileWeights(weights, reach)
        return found

    def buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 work buffer `name` viewed at `shape` (grown when too small); its contents are stale."""
        buf = self._buffers.get(name)
        if buf is None or any(n > m for n, m in zip(shape, buf.shape)):
            buf = self._buffers[name] = np.empty(shape if buf is None else np.maximum(shape, buf.shape), np.float32)
        return buf[tuple(slice(0, n) for n in shape)]


def blend_chunk(chunk: Window, tiles: Iterable[TileOutput], cache: BlendCache, float_dtype: Any, uncertainty: bool) -> dict[str, np.ndarray]:
    """Blend the tiles that reach `chunk` into its labels, entropy and confidence (and uncertainty), in float32.

    Each tile adds weight x probabilities where its class-0 value is not
    PROB_NODATA (a skipped tile is simply not passed); pixels no weight
    reaches get NODATA_LABEL and NaN. The blended probabilities are
    renormalised (undoing the uint8 rounding drift), then argmax, max and
    entropy are taken. The tile whose core is the chunk is summed first (it
    covers the chunk with weight 1, so its values are copied rather than
    multiplied and added to zeros), then the others in the order given: the
    same tiles give the same bits. Float outputs have `float_dtype`; every
    output is a new array.
    """
    shape = (chunk.height, chunk.width)
    weight_sum = cache.buffer("weight_sum", shape)
    unc_sum = cache.buffer("unc_sum", shape) if uncertainty else None
    probs_sum: np.ndarray | None = None  # (classes, h, w): sum of weight x uint8 value; the scale cancels in the renormalisation
    for t in sorted(tiles, key=lambda t: t.tile.core != chunk):
        tw = cache.weights(t.tile)
        win = t.tile.window
        inter = Window(win.row + tw.reach.row, win.col + tw.reach.col, tw.reach.height, tw.reach.width).intersect(chunk)
        if inter is None:
            continue
        src = (slice(inter.row - win.row, inter.row - win.row + inter.height), slice(inter.col - win.col, inter.col - win.col + inter.width))
        dst = (slice(inter.row - chunk.row, inter.row - chunk.row + inter.height), slice(inter.col - chunk.col, inter.col - chunk.col + inter.width))
        q = t.probs[(slice(None), *src)]
        if unc_sum is not None and t.uncertainty is None:
            raise ValueError(f"tile {t.tile.id} has no uncertainty, but the blend was asked for it")
        first = probs_sum is None and inter == chunk  # the sums start as this tile's terms
        if probs_sum is None:
            probs_sum = cache.buffer("probs_sum", (q.shape[0], *shape))
            if not first:
                _zero(probs_sum, weight_sum, unc_sum)
        w = weight_sum if first else cache.buffer("w", (inter.height, inter.width))
        np.not_equal(q[0], PROB_NODATA, out=w)
        plain = t.tile.core.intersect(inter) == inter and bool(w.all())  # weight 1 all over: the terms are the values
        if not plain:
            np.multiply(w, tw.weights[src], out=w)
        if not first:
            np.add(weight_sum[dst], w, out=weight_sum[dst])
        _accumulate(probs_sum[(slice(None), *dst)], q, w, None if first else cache.buffer("probs_term", q.shape), plain)
        if unc_sum is not None and t.uncertainty is not None:
            _accumulate(unc_sum[dst], t.uncertainty[src], w, None if first else cache.buffer("unc_term", w.shape), plain)
    if probs_sum is None:
        _zero(weight_sum, unc_sum)
    invalid = weight_sum <= 0
    outputs = _finish(probs_sum, weight_sum, invalid, cache, float_dtype)
    if unc_sum is not None:
        weight_sum[invalid] = 1.0
        outputs["uncertainty"] = np.divide(unc_sum, weight_sum, out=np.empty(shape, float_dtype))
        outputs["uncertainty"][invalid] = np.nan
    return outputs


def _zero(*buffers: np.ndarray | None) -> None:
    for buf in buffers:
        if buf is not None:
            buf.fill(0)


def _accumulate(total: np.ndarray, values: np.ndarray, w: np.ndarray, scratch: np.ndarray | None, plain: bool) -> None:
    """total += w x values in float32, NaN values adding nothing; no `scratch`: total is set instead; `plain`: w is all 1."""
    term = total if scratch is None else scratch
    np.copyto(term, values)
    if values.dtype.kind == "f":
        np.copyto(term, 0.0, where=np.isnan(term))  # uncertainty is NaN outside the data, where the weight is 0 too
    if not plain:
        np.multiply(term, w, out=term)
    if scratch is not None:
        np.add(total, term, out=total)


def _finish(probs_sum: np.ndarray | None, weight_sum: np.ndarray, invalid: np.ndarray, cache: BlendCache, float_dtype: Any) -> dict[str, np.ndarray]:
    """Labels, confidence and entropy of the blended sums; NODATA_LABEL and NaN where no weight landed."""
    shape = weight_sum.shape
    if probs_sum is None:
        return {
            "labels": np.full(shape, NODATA_LABEL, np.uint8),
            "entropy": np.full(shape, np.nan, float_dtype),
            "confidence": np.full(shape, np.nan, float_dtype),
        }
    # p = probs_sum / PROB_SCALE / weight_sum renormalised, p / max(sum p, 1e-12), is probs_sum / max(sum, 1e-12 x PROB_SCALE x weight_sum)
    inv, p, plogp = cache.buffer("inv", shape), cache.buffer("p", shape), cache.buffer("plogp", shape)
    np.sum(probs_sum, axis=0, out=inv)
    np.multiply(weight_sum, np.float32(1e-12 * PROB_SCALE), out=p)
    np.maximum(inv, p, out=inv)
    inv[invalid] = 1.0
    np.divide(np.float32(1.0), inv, out=inv)
    labels, label, above = np.zeros(shape, np.uint8), np.empty(shape, np.uint8), np.empty(shape, bool)
    best, entropy = cache.buffer("best", shape), cache.buffer("entropy", shape)
    entropy.fill(0)
    for k in range(probs_sum.shape[0]):  # one pass per class while its plane is in cache
        np.multiply(probs_sum[k], inv, out=p)
        if k == 0:
            np.copyto(best, p)
        else:  # argmax, the first on ties like np.argmax, with no masked (branchy) copy
            np.greater(p, best, out=above)
            np.multiply(above.view(np.uint8), np.uint8(k), out=label)
            np.maximum(labels, label, out=labels)  # k exceeds every label so far: the max is k where above, else the old label
            np.maximum(best, p, out=best)
        np.add(p, _TINY, out=plogp)  # log(0 + tiny) x 0 = 0, and p + tiny == p for every p above 2e-31
        np.log(plogp, out=plogp)
        np.multiply(plogp, p, out=plogp)
        np.subtract(entropy, plogp, out=entropy)
    outputs = {"labels": labels, "entropy": entropy.astype(float_dtype), "confidence": best.astype(float_dtype)}
    labels[invalid] = NODATA_LABEL
    outputs["entropy"][invalid] = np.nan
    outputs["confidence"][invalid] = np.nan
    return outputs


class StitchTask(NamedTuple):
    """What a stitch task hands back."""

    chunks: int  # output chunks written
    seconds: float
    tile_reads: int  # tiles it read (decoded) from tiles/; the rest came from this process's earlier tasks


def stitch_chunks(job: StitchJob, chunk_ids: Sequence[int], skipped: frozenset[int]) -> StitchTask:
    """Blend and write the output chunks `chunk_ids` (tile cores).

    Each chunk is tile `cid`'s core, so its digests go into that tile's ledger
    entry (written by this task alone, after the chunk), with `stitched`: what
    `verify` checks, and what a resumed run need not stitch again.
    Every write is fenced by the run's lease, like a worker's; skipped tiles
    (all nodata) were never written and are not read.
    """
    from segbatch.heap import keep_freed_buffers
    from segbatch.location import use_variables

    keep_freed_buffers()  # this process's tiles and chunks reuse the memory freed before (segbatch.heap)
    use_variables(job.environment)  # a task on another node: the driver's storage variables, before the store is opened
    started = time.perf_counter()
    fence = job.fence
    root = _open(job)
    local = is_local(root.root)
    uncertainty, with_confidence = "uncertainty" in root, "confidence" in root  # stores made before confidence existed are still stitched
    float_dtype = root["entropy"].dtype
    blend_cache = _blend_cache(job.tiles.overlap)
    reads = 0

    def tile(tid: int) -> TileOutput:
        nonlocal reads
        found, read = _DECODED.get((job.store, job.run, tid), lambda: _read_tile(root, job.tiles[tid], uncertainty))
        reads += read
        return found

    for cid in chunk_ids:
        fence.check()
        core = job.tiles[cid].core
        outputs = blend_chunk(core, (tile(tid) for tid in job.tiles.contributors(cid) if tid not in skipped), blend_cache, float_dtype, uncertainty)
        if not with_confidence:
            del outputs["confidence"]
        digests = write_region(root, core.slices, outputs, side_by_side=not local)  # tasks fill the CPUs; threads hide a remote store's latency
        entry = json.loads(unit_entry(root, cid) or "{}")
        fence.check(fresh=True)
        record_unit(root, cid, {**entry, "chunks": digests, "stitched": True})
    return StitchTask(len(chunk_ids), time.perf_counter() - started, reads)


OPENED_STORES = 4  # stores a process keeps open for its stitch tasks


_opened: LruCache[tuple[str, str], OpenArrays] = LruCache(OPENED_STORES)  # (store, run) -> its arrays (see `_open`)
_blend_caches = threading.local()


def _open(job: StitchJob) -> OpenArrays:
    """The job's store open for writing, its nodes looked up once for all this process's tasks of the run.

    While inference goes on, a task often gets the one or two chunks a tile
    completed: opening the store and looking up its arrays again each time
    would cost more than stitching them. The arrays' metadata do not change
    during a run; the lease is checked before each chunk, not here.
    """
    return _opened.get((job.store, job.run), lambda: OpenArrays(job.fence.open(job.store)))


def _blend_cache(overlap: int) -> BlendCache:
    """The calling thread's BlendCache for `overlap`: weights and work buffers kept across tasks (a cache serves one thread)."""
    caches: dict[int, BlendCache] = _blend_caches.__dict__.setdefault("by_overlap", {})
    if overlap not in caches:
        caches[overlap] = BlendCache(overlap)
    return caches[overlap]


def _read_tile(root: OpenArrays, tile: Tile, uncertainty: bool) -> TileOutput:
    """Tile `tile`'s outputs: chunk (id, 0, ...) of each tiles/ array, which holds the whole tile (segbatch.tilestore)."""
    probs = _tile_chunk(root["tiles/probs"], tile.id)
    unc = _tile_chunk(root["tiles/uncertainty"], tile.id) if uncertainty else None
    return TileOutput(tile, probs, unc)


def _tile_chunk(arr: Any, tid: int) -> np.ndarray:
    values: np.ndarray = read_chunk(arr, (tid,) + (0,) * (arr.ndim - 1))[0]
    values.setflags(write=False)  # shared by every chunk (and task) that blends this tile
    return values


class _DecodedTiles:
    """The tiles this process's stitch tasks decoded, kept across tasks, least recently used out first past a byte budget.

    A tile is blended by the 3x3 chunks around it, which become ready over
    about two rows of the raster, often in different tasks; Ray runs a
    driver's tasks of one function in the workers it already has, so a process
    keeping what it decoded reads each tile about once instead of about three
    times (the 3 rows it reaches). Keys name the store and the run as well as
    the tile: a tile is written once per run, before any chunk that blends it
    is handed out. A raster too wide for the budget to hold about three rows
    of tiles falls back to reusing the current row's: each tile read about 3
    times, as a task's own cache gave.
    """

    def __init__(self, budget: int = TILE_CACHE_BYTES, least: int = TILE_CACHE_TILES) -> None:
        self.budget, self.least = budget, least
        self.tiles: OrderedDict[tuple[str, str, int], TileOutput] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()  # tasks of a threaded (local) Ray share the process

    def get(self, key: tuple[str, str, int], read: Any) -> tuple[TileOutput, int]:
        """The tile under `key`, read with `read()` unless kept; and 1 if it was read, else 0."""
        with self.lock:
            if key in self.tiles:
                self.tiles.move_to_end(key)
                return self.tiles[key], 0
        found = read()
        with self.lock:
            if key not in self.tiles:
                self.tiles[key] = found
                self.bytes += _nbytes(found)
            while self.bytes > self.budget and len(self.tiles) > self.least:
                self.bytes -= _nbytes(self.tiles.popitem(last=False)[1])
        return found, 1


def _nbytes(t: TileOutput) -> int:
    return t.probs.nbytes + (t.uncertainty.nbytes if t.uncertainty is not None else 0)


_DECODED = _DecodedTiles()
