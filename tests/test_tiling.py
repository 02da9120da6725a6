import numpy as np
import pytest

from segbatch.errors import InputError
from segbatch.tiling import axis_weights, blend_weights, padded_side, plan_tiles


def _coverage(plan, what):
    count = np.zeros((plan.height, plan.width), np.int32)
    for t in plan:
        count[getattr(t, what).slices] += 1
    return count


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(1000, 700, 256, 64), (256, 256, 256, 64), (130, 90, 256, 64), (517, 1031, 200, 30)])
def test_cores_partition_the_raster_on_chunk_boundaries(h, w, tile, overlap):
    plan = plan_tiles(h, w, tile, overlap)
    assert (_coverage(plan, "core") == 1).all()
    for t in plan:
        assert t.core.row % plan.core == 0 and t.core.col % plan.core == 0
        assert t.core.height <= plan.core and t.core.width <= plan.core


@pytest.mark.parametrize(("h", "w"), [(1000, 700), (300, 260), (256, 999)])
def test_windows_hold_their_core_stay_inside_and_are_a_full_tile(h, w):
    plan = plan_tiles(h, w, 256, 64)
    for t in plan:
        win, core = t.window, t.core
        assert win.row >= 0 and win.col >= 0 and win.row + win.height <= h and win.col + win.width <= w
        assert win.intersect(core) == core
        # edge tiles are shifted inward, not padded: every window is a whole tile when the raster allows
        assert win.height == min(256, h) and win.width == min(256, w)
        # inner sides keep the full margin of context
        if core.row > 0 and core.row + core.height < h:
            assert core.row - win.row >= 64 or win.row + win.height == h


def test_a_raster_smaller_than_a_tile_is_one_window():
    plan = plan_tiles(100, 50, 256, 64)
    assert len(plan) == 1 and plan[0].window.height == 100 and plan[0].window.width == 50


def test_tile_must_exceed_twice_the_overlap():
    with pytest.raises(InputError, match="larger than twice"):
        plan_tiles(100, 100, 128, 64)
    with pytest.raises(InputError):
        plan_tiles(100, 100, 128, -1)


def test_axis_weights_are_one_on_the_core_and_fall_to_zero_on_the_outer_half():
    w = axis_weights(0, 256, 64, 128, 64)
    assert (w[64:192] == 1).all()
    assert (w[:32] == 0).all() and (w[224:] == 0).all()  # outer half of each margin
    assert (np.diff(w[32:64]) >= 0).all() and (np.diff(w[192:224]) <= 0).all()
    assert 0 < w[40] < 1


def test_blended_weights_never_vanish_and_a_constant_survives_blending():
    plan = plan_tiles(700, 530, 256, 64)
    total = np.zeros((700, 530))
    blended = np.zeros((700, 530))
    for t in plan:
        wt = blend_weights(t, plan.overlap)
        total[t.window.slices] += wt
        blended[t.window.slices] += wt * 3.5
    assert total.min() >= 1.0  # every pixel has its own core's full weight: no dark frame at the edges
    assert np.allclose(blended / total, 3.5)


def test_contributors_are_the_tiles_whose_weights_reach_a_core():
    plan = plan_tiles(1000, 900, 256, 64)
    for t in plan:
        reaching = {u.id for u in plan if _weight_in(u, t.core, 64) > 0}
        assert t.id in reaching
        assert reaching <= set(plan.contributors(t.id))


def _weight_in(u, core, overlap):
    inter = u.window.intersect(core)
    if inter is None:
        return 0.0
    w = blend_weights(u, overlap)
    return float(w[inter.row - u.window.row : inter.row - u.window.row + inter.height, inter.col - u.window.col : inter.col - u.window.col + inter.width].sum())


def test_padded_side():
    assert padded_side(256, 32) == 256 and padded_side(257, 32) == 288 and padded_side(1, 16) == 16
