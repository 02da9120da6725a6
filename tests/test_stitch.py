"""The stitcher's blend (`blend_chunk`) against a plain float64 reference, its nodata handling, weight cache and task code."""

import numpy as np
import pytest

import segbatch.owner
import segbatch.stitch as stitch
import segbatch.store
from segbatch.stitch import BlendCache, StitchJob, TileOutput, blend_chunk, stitch_chunks
from segbatch.store import NODATA_LABEL
from segbatch.tilestore import PROB_NODATA, PROB_SCALE
from segbatch.tiling import blend_weights, plan_tiles

CLASSES = 5


def make_tiles(plan, seed, nodata_boxes=()):
    """Seeded uint8 probabilities and float32 uncertainty for every tile, padded past the window like tiles/;
    `nodata_boxes` (raster rows, cols slices) are PROB_NODATA / NaN in every tile that reads them."""
    rng = np.random.default_rng(seed)
    tiles = []
    for t in plan:
        h, w = t.window.height, t.window.width
        logits = rng.standard_normal((CLASSES, h, w)) * 2
        p = np.exp(logits) / np.exp(logits).sum(axis=0)
        probs = np.full((CLASSES, h + 3, w + 5), PROB_NODATA, np.uint8)
        probs[:, :h, :w] = np.rint(p * PROB_SCALE)
        unc = np.full((h + 3, w + 5), np.nan, np.float32)
        unc[:h, :w] = rng.random((h, w))
        for rows, cols in nodata_boxes:
            mask = np.zeros((h, w), bool)
            r0, r1, c0, c1 = (max(0, v) for v in (rows.start - t.window.row, rows.stop - t.window.row, cols.start - t.window.col, cols.stop - t.window.col))
            mask[r0:r1, c0:c1] = True
            probs[:, :h, :w][:, mask] = PROB_NODATA
            unc[:h, :w][mask] = np.nan
        tiles.append(TileOutput(t, probs, unc))
    return tiles


def reference(plan, tiles, chunk, skipped=frozenset()):
    """The blend written plainly in float64, over every tile of the plan (not only the contributors)."""
    p_sum = np.zeros((CLASSES, chunk.height, chunk.width))
    w_sum = np.zeros((chunk.height, chunk.width))
    u_sum = np.zeros_like(w_sum)
    for t in tiles:
        inter = t.tile.window.intersect(chunk)
        if t.tile.id in skipped or inter is None:
            continue
        src = (
            slice(inter.row - t.tile.window.row, inter.row - t.tile.window.row + inter.height),
            slice(inter.col - t.tile.window.col, inter.col - t.tile.window.col + inter.width),
        )
        dst = (slice(inter.row - chunk.row, inter.row - chunk.row + inter.height), slice(inter.col - chunk.col, inter.col - chunk.col + inter.width))
        q = t.probs[:, src[0], src[1]].astype(np.float64)
        w = blend_weights(t.tile, plan.overlap)[src].astype(np.float64) * (q[0] != PROB_NODATA)
        p_sum[:, dst[0], dst[1]] += w * q / PROB_SCALE
        w_sum[dst] += w
        u_sum[dst] += w * np.nan_to_num(t.uncertainty[src].astype(np.float64))
    valid = w_sum > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = p_sum / w_sum
        p /= p.sum(axis=0)
        entropy = -(p * np.where(p > 0, np.log(np.where(p > 0, p, 1)), 0)).sum(axis=0)
        unc = u_sum / w_sum
    top2 = np.sort(np.where(valid, p, 0), axis=0)[-2:]
    return {
        "labels": np.where(valid, p.argmax(axis=0), NODATA_LABEL),
        "confidence": np.where(valid, p.max(axis=0), np.nan),
        "entropy": np.where(valid, entropy, np.nan),
        "uncertainty": np.where(valid, unc, np.nan),
        "clear": ~valid | (top2[1] - top2[0] > 1e-4),  # where the label is not a near tie
    }


def blend(plan, tiles, cid, cache=None, skipped=frozenset(), float_dtype=np.float32):
    cache = cache or BlendCache(plan.overlap)
    return blend_chunk(plan[cid].core, [tiles[t] for t in plan.contributors(cid) if t not in skipped], cache, float_dtype, uncertainty=True)


def assert_matches(out, ref, atol=2e-6):
    clear = ref["clear"]
    assert (out["labels"][clear] == ref["labels"][clear]).all()
    for name in ("confidence", "entropy", "uncertainty"):
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], ref[name], rtol=2e-6, atol=atol, equal_nan=True)


PLANS = [(100, 90, 48, 8), (61, 130, 40, 6), (30, 20, 48, 8)]  # inner, edge and shifted tiles; a raster smaller than a tile


@pytest.mark.parametrize("shape", PLANS)
def test_blend_matches_a_float64_reference_on_every_chunk(shape):
    plan = plan_tiles(*shape)
    tiles = make_tiles(plan, seed=1)
    for cid in range(len(plan)):
        out, ref = blend(plan, tiles, cid), reference(plan, tiles, plan[cid].core)
        assert out["labels"].dtype == np.uint8 and set(out) == {"labels", "entropy", "confidence", "uncertainty"}
        assert ref["clear"].mean() > 0.99 and (ref["labels"] != NODATA_LABEL).all()
        assert_matches(out, ref)


def test_float16_outputs_are_the_float32_blend_rounded():
    plan = plan_tiles(*PLANS[0])
    tiles = make_tiles(plan, seed=2)
    wide, narrow = blend(plan, tiles, 4), blend(plan, tiles, 4, float_dtype=np.float16)
    assert (narrow["labels"] == wide["labels"]).all()
    for name in ("confidence", "entropy", "uncertainty"):
        assert narrow[name].dtype == np.float16 and np.array_equal(narrow[name], wide[name].astype(np.float16))


def test_a_pixel_only_its_own_tile_reaches_has_that_tiles_values():
    plan = plan_tiles(*PLANS[0])  # core 32: weights reach overlap/2 = 4 px beyond it
    tiles = make_tiles(plan, seed=3)
    cid = 4
    out, own = blend(plan, tiles, cid), tiles[cid]
    core, win = plan[cid].core, plan[cid].window
    inner = (slice(4, core.height - 4), slice(4, core.width - 4))
    ys, xs = (slice(core.row - win.row + s.start, core.row - win.row + s.stop) for s in inner)
    q = own.probs[:, ys, xs].astype(np.float32)
    assert np.array_equal(out["uncertainty"][inner], own.uncertainty[ys, xs])
    assert np.array_equal(out["labels"][inner], q.argmax(axis=0))
    np.testing.assert_allclose(out["confidence"][inner], q.max(axis=0) / q.sum(axis=0), rtol=1e-6)
    # one pixel further out, the neighbours' weights are > 0 and change the values
    assert not np.array_equal(out["uncertainty"][3], own.uncertainty[core.row - win.row + 3, core.col - win.col : core.col - win.col + core.width])


def test_nodata_pixels_add_no_weight_and_uncovered_pixels_are_nodata():
    plan = plan_tiles(*PLANS[0])
    cid = 4
    core = plan[cid].core
    # a box inside the core's inner part (only its own tile reaches it), and one across the core's top edge (neighbours reach part of it)
    inner = (slice(core.row + 10, core.row + 14), slice(core.col + 10, core.col + 20))
    edge = (slice(core.row - 6, core.row + 2), slice(core.col + 5, core.col + 9))
    tiles = make_tiles(plan, seed=4, nodata_boxes=[inner])
    probs = tiles[cid].probs.copy()  # the edge box is nodata in the chunk's own tile only: the tile above still covers it
    win = plan[cid].window
    probs[:, edge[0].start - win.row : edge[0].stop - win.row, edge[1].start - win.col : edge[1].stop - win.col] = PROB_NODATA
    tiles[cid] = TileOutput(tiles[cid].tile, probs, tiles[cid].uncertainty)
    out, ref = blend(plan, tiles, cid), reference(plan, tiles, core)
    assert_matches(out, ref)
    box = (slice(10, 14), slice(10, 20))
    assert (out["labels"][box] == NODATA_LABEL).all()
    assert all(np.isnan(out[name][box]).all() for name in ("confidence", "entropy", "uncertainty"))
    assert (out["labels"] != NODATA_LABEL).sum() == core.height * core.width - 40
    # where only the own tile is nodata, the tile above alone decides: its label, not nodata
    above = tiles[plan.contributors(cid)[1]]
    y, x = core.row, core.col + 6  # the core's top row, inside the edge box, 0.5 px from the core: the tile above's weight is > 0
    value = above.probs[:, y - above.tile.window.row, x - above.tile.window.col]
    assert out["labels"][0, 6] == value.argmax() and out["labels"][0, 6] != NODATA_LABEL


def test_skipped_tiles_are_left_out_and_a_chunk_without_tiles_is_all_nodata():
    plan = plan_tiles(*PLANS[0])
    tiles = make_tiles(plan, seed=5)
    cid = 4
    out, ref = blend(plan, tiles, cid, skipped={cid}), reference(plan, tiles, plan[cid].core, skipped={cid})
    assert_matches(out, ref)
    # without its own tile only the neighbours' reach (4 px inside the core) is covered
    core = plan[cid].core
    assert (out["labels"][4:-4, 4:-4] == NODATA_LABEL).all() and (out["labels"][:4] != NODATA_LABEL).all()
    assert np.isnan(out["entropy"][4:-4, 4:-4]).all() and not np.isnan(out["entropy"][:, :4]).any()
    empty = blend_chunk(core, [], BlendCache(plan.overlap), np.float16, uncertainty=True)
    assert (empty["labels"] == NODATA_LABEL).all() and empty["labels"].shape == (core.height, core.width)
    assert all(empty[name].dtype == np.float16 and np.isnan(empty[name]).all() for name in ("confidence", "entropy", "uncertainty"))


def test_weights_are_computed_once_per_geometry_and_equal_blend_weights():
    plan = plan_tiles(1000, 900, 256, 64)
    cache = BlendCache(plan.overlap)
    for t in plan:
        assert np.array_equal(cache.weights(t).weights, blend_weights(t, plan.overlap))
    distinct = {blend_weights(t, plan.overlap).tobytes() for t in plan}
    assert cache.geometries == len(distinct) < len(plan)
    inner = [
        t
        for t in plan
        if (t.core.row - t.window.row, t.core.col - t.window.col, t.core.height, t.core.width, t.window.height, t.window.width) == (64, 64, 128, 128, 256, 256)
    ]
    assert len(inner) > 1 and all(cache.weights(t) is cache.weights(inner[0]) for t in inner)
    assert not cache.weights(inner[0]).weights.flags.writeable
    reach = cache.weights(inner[0]).reach  # the window less the outer half of each margin, where the weights are 0
    assert (reach.row, reach.col, reach.height, reach.width) == (32, 32, 192, 192)


def test_a_reused_cache_gives_the_same_bits_as_a_fresh_one():
    plan = plan_tiles(*PLANS[1])  # chunks of several sizes: buffers are reused at other shapes
    tiles = make_tiles(plan, seed=6)
    cache = BlendCache(plan.overlap)
    order = [*range(len(plan)), 0, len(plan) - 1, 3]
    reused = [blend(plan, tiles, cid, cache) for cid in order]
    assert cache.geometries < len(plan)
    for cid, out in zip(order, reused):
        fresh = blend(plan, tiles, cid)
        assert all(np.array_equal(out[k], fresh[k], equal_nan=True) for k in fresh)


def test_a_blend_without_uncertainty_needs_none_and_one_with_it_refuses_a_tile_without():
    plan = plan_tiles(*PLANS[0])
    tiles = [TileOutput(t.tile, t.probs, None) for t in make_tiles(plan, seed=7)]
    out = blend_chunk(plan[0].core, [tiles[t] for t in plan.contributors(0)], BlendCache(plan.overlap), np.float32, uncertainty=False)
    assert set(out) == {"labels", "entropy", "confidence"}
    with pytest.raises(ValueError, match="no uncertainty"):
        blend(plan, tiles, 0)


class FakeArray:
    def __init__(self, data, skipped=frozenset()):
        self.data, self.dtype, self.skipped, self.ndim = data, data.dtype, skipped, data.ndim

    def __getitem__(self, index):
        assert index not in self.skipped, f"skipped tile {index} was read"
        return self.data[index]


def test_stitch_chunks_blends_from_the_store_and_fences_with_the_jobs_lease(monkeypatch):
    plan = plan_tiles(*PLANS[0])
    tiles = make_tiles(plan, seed=8)
    skipped = frozenset({1})
    root = {
        "tiles/probs": FakeArray(np.stack([t.probs for t in tiles]), skipped),
        "tiles/uncertainty": FakeArray(np.stack([t.uncertainty for t in tiles]), skipped),
        "entropy": FakeArray(np.zeros(1, np.float16)),
        "uncertainty": None,  # a store made before confidence existed
    }
    fences, written, ledger = [], [], {}
    monkeypatch.setattr(segbatch.store, "open_store", lambda store, mode: root)
    monkeypatch.setattr(segbatch.owner, "check_fence", lambda store, run, fresh: fences.append((store, run)))
    monkeypatch.setattr(stitch, "is_local", lambda root: root is not None)  # a folder on this machine
    monkeypatch.setattr(
        stitch, "write_region", lambda root, region, outputs, side_by_side: written.append((region, outputs, side_by_side)) or {"labels/0.0": "d"}
    )
    monkeypatch.setattr(stitch, "read_chunk", lambda arr, idx: arr[idx[0]][None])  # a tile's chunk: the whole tile
    monkeypatch.setattr(stitch, "unit_entry", lambda root, cid: ["", "", "", "", '{"unit": 4}'][cid])
    monkeypatch.setattr(stitch, "record_unit", lambda root, cid, entry: ledger.setdefault(cid, entry))
    job = StitchJob(store="/data/group.zarr", tiles=plan, run="run-1", lease="/data/job.zarr")
    count, seconds, reads = stitch_chunks(job, [0, 4], skipped)
    assert count == 2 and seconds > 0
    # every tile the two chunks blend, but the skipped one, read once (chunk 4's tiles are mostly chunk 0's)
    assert reads == len((set(plan.contributors(0)) | set(plan.contributors(4))) - skipped)
    assert fences == [("/data/job.zarr", "run-1")] * 4
    assert ledger[4] == {"unit": 4, "chunks": {"labels/0.0": "d"}, "stitched": True}
    (region, out, side_by_side), ref = written[1], reference(plan, tiles, plan[4].core, skipped)
    assert region == plan[4].core.slices and not side_by_side  # a local store: its arrays written in the task's own thread
    assert set(out) == {"labels", "entropy", "uncertainty"} and out["entropy"].dtype == np.float16
    assert (out["labels"][ref["clear"]] == ref["labels"][ref["clear"]]).all()
    np.testing.assert_allclose(out["uncertainty"], ref["uncertainty"], atol=1e-3, equal_nan=True)
    # a later task of this process reads only the tiles it has not decoded yet
    earlier = set(plan.contributors(0)) | set(plan.contributors(4))
    assert stitch_chunks(job, [0, 1, 3, 4], skipped).tile_reads == len((set(plan.contributors(1)) | set(plan.contributors(3))) - earlier - skipped)
    fences.clear()
    again = stitch_chunks(StitchJob(store="/data/one.zarr", tiles=plan, run="run-2"), [4], skipped)
    assert fences == [("/data/one.zarr", "run-2")] * 2  # no lease given: the store's own
    assert again.tile_reads == len(set(plan.contributors(4)) - skipped)  # another store (or run): its tiles are read anew


def test_decoded_tiles_keep_the_recently_used_within_their_budget():
    tile = plan_tiles(*PLANS[0])[0]
    one = TileOutput(tile, np.zeros((3, 10, 10), np.uint8), np.zeros((10, 10), np.float32))  # 300 + 400 bytes
    cache, reads = stitch._DecodedTiles(budget=2100, least=2), []

    def get(key):
        return cache.get(("s", "r", key), lambda: reads.append(key) or one)[1]

    assert [get(k) for k in (0, 1, 2, 0, 3, 1)] == [1, 1, 1, 0, 1, 1]  # three fit; 3 pushed out 1, used longest ago
    assert reads == [0, 1, 2, 3, 1] and cache.bytes == 3 * 700
    small = stitch._DecodedTiles(budget=0, least=2)  # a budget below a tile still keeps `least` tiles
    for k in (0, 1, 0):
        small.get(("s", "r", k), lambda: one)
    assert list(small.tiles) == [("s", "r", 1), ("s", "r", 0)]
