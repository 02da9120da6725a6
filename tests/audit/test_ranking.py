"""The audit's spaced top-K: greedy selection over a bounded pool, exact while the pool holds a neighbourhood per pick."""

from types import SimpleNamespace

import numpy as np
import pytest

from segbatch.audit.items import Item
from segbatch.audit.ranking import MAX_CANDIDATES, CompactRows, DiverseTop, Spacing, spacing_for
from segbatch.errors import InputError


def _video_root(frames: int, fps: float = 25.0) -> dict:
    return {"time": np.arange(frames) / fps, "labels": SimpleNamespace(shape=(frames, 8, 8), chunks=(8, 8, 8))}


def _raster_root(tiles_y: int, tiles_x: int, tile: int = 64) -> dict:
    return {"labels": SimpleNamespace(shape=(tiles_y * tile - 5, tiles_x * tile), chunks=(tile, tile))}


def _frame(i: int, fps: float = 25.0) -> Item:
    return Item(i, (slice(i, i + 1),), f"frame {i}", {"frame": i, "time": i / fps})


def _tile(r: int, c: int, cols: int, tile: int = 64) -> Item:
    return Item(r * cols + c, (), f"tile {r},{c}", {"row": r * tile, "col": c * tile})


def _greedy(scores: np.ndarray, close, top: int) -> list[int]:
    """Greedy selection over every item: the reference the bounded pool must reproduce."""
    picked: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if len(picked) < top and not any(close(i, j) for j in picked):
            picked.append(i)
    return picked


def test_video_neighbourhood_counts_the_frames_one_pick_excludes():
    s = spacing_for(_video_root(500), "video", None, 20)
    assert (s.gap, s.unit, s.neighbourhood) == (1.0, "s", 49)  # 24 frames either side: the 25th is a second away
    assert spacing_for(_video_root(500), "video", 0.2, 20).neighbourhood == 9
    assert spacing_for(_video_root(10), "video", 5.0, 20).neighbourhood == 10  # never more than the store
    assert spacing_for(_video_root(500), "video", 0, 20).radius == 0


@pytest.mark.parametrize("seed", range(5))
def test_spaced_video_picks_equal_greedy_over_the_whole_store(seed):
    rng = np.random.default_rng(seed)
    frames, top = 3000, 12
    scores = np.convolve(rng.random(frames), np.ones(40) / 40, mode="same")  # smooth: runs of near-equal neighbours
    ranking = DiverseTop(top, spacing_for(_video_root(frames), "video", 1.0, 20))
    for i in range(frames):
        ranking.offer(float(scores[i]), _frame(i), None)
    assert len(ranking.heap) == top * 49 < frames
    picks = [item.index for _, item, _ in ranking.picks()]
    assert picks == _greedy(scores, lambda i, j: abs(i - j) < 25, top)
    assert all(abs(a - b) >= 25 for k, a in enumerate(picks) for b in picks[:k])
    assert ranking.exact(len(picks)) and picks[0] == int(np.argmax(scores))


def test_raster_picks_keep_out_of_each_others_neighbourhood():
    rows, cols, top = 20, 30, 10
    s = spacing_for(_raster_root(rows, cols), "raster", None, 20)
    assert (s.neighbourhood, s.describe()) == (9, "no two within 1 tile")
    rng = np.random.default_rng(1)
    scores = rng.random(rows * cols)
    ranking = DiverseTop(top, s)
    for i in range(rows * cols):
        ranking.offer(float(scores[i]), _tile(i // cols, i % cols, cols), None)
    picks = [item.index for _, item, _ in ranking.picks()]

    def close(i: int, j: int) -> bool:
        return max(abs(i // cols - j // cols), abs(i % cols - j % cols)) <= 1

    assert picks == _greedy(scores, close, top)
    assert spacing_for(_raster_root(rows, cols), "raster", 2, 20).neighbourhood == 25
    assert spacing_for(_raster_root(2, 1), "raster", 3, 20).neighbourhood == 2  # clipped to the grid


def test_images_are_not_spaced_and_a_gap_for_them_is_refused():
    s = spacing_for({}, "images", None, 20)
    assert s.radius == 0 and s.neighbourhood == 1 and s.describe() == ""
    assert spacing_for({}, "images", 0, 20).radius == 0
    with pytest.raises(InputError, match="--min-gap applies to video"):
        spacing_for({}, "images", 2, 20)


def test_a_capped_pool_says_it_is_not_exact():
    spacing = Spacing("video", 1000.0, 1000.0, 10**6)
    ranking = DiverseTop(3, spacing)
    assert ranking.capacity == MAX_CANDIDATES
    for i in range(MAX_CANDIDATES + 10):
        ranking.offer(float(i % 7), _frame(i), None)
    picks = ranking.picks()
    assert len(picks) == 1 and ranking.summary(len(picks))["exact"] is False
    zero = DiverseTop(0, spacing)
    zero.offer(1.0, _frame(0), None)
    assert zero.picks() == [] and zero.summary(0)["exact"]


def test_candidate_rows_are_packed_and_come_back_equal():
    rows = CompactRows()
    row = {
        "item": 7,
        "name": "frame 7",
        "time": 0.28,
        "valid_pixels": 12288,
        "uncertainty_mean": 0.1,
        "entropy_p95": float("nan"),
        "truth": "yes",
        "big": 2**60,
    }
    packed = [rows.pack(dict(row, item=i)) for i in range(3)]
    assert packed[0][0] is packed[2][0] and packed[0][1] is packed[2][1]  # column names and int flags shared
    back = CompactRows.unpack(packed[1])
    assert list(back) == list(row) and back["item"] == 1 and type(back["valid_pixels"]) is int and type(back["time"]) is float
    assert np.isnan(back["entropy_p95"]) and {k: v for k, v in back.items() if k not in ("item", "entropy_p95")} == {
        k: v for k, v in row.items() if k not in ("item", "entropy_p95")
    }


def test_a_short_video_still_gets_its_top_picks_spread_and_then_filled():
    s = spacing_for(_video_root(40), "video", None, 20)  # 1.56 s: a 1 s gap would leave 2 picks
    assert s.gap == pytest.approx(39 / 25 / 19) and s.fill
    ranking = DiverseTop(20, s)
    scores = np.random.default_rng(0).random(40)
    for i in range(40):
        ranking.offer(float(scores[i]), _frame(i), None)
    picks = ranking.picks()
    assert len(picks) == 20 and [p[0] for p in picks] == sorted((p[0] for p in picks), reverse=True)
    assert picks[0][1].index == int(np.argmax(scores))
    given = DiverseTop(20, spacing_for(_video_root(40), "video", 1.0, 20))  # a gap the user gave: kept, fewer picks
    for i in range(40):
        given.offer(float(scores[i]), _frame(i), None)
    assert len(given.picks()) == 2 and given.filled == 0
