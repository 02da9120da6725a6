import numpy as np
import pytest

from segbatch.audit.metrics import HonestyAccumulator, class_iou, confusion_matrix, mean_iou


def test_miou_of_perfect_and_of_swapped_predictions():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    assert mean_iou(confusion_matrix(truth.copy(), truth, 3, 255)) == 1.0
    swapped = np.where(truth == 0, 1, np.where(truth == 1, 0, truth))
    assert mean_iou(confusion_matrix(swapped, truth, 3, 255)) == pytest.approx(1 / 3)


def test_confusion_counts_truth_rows_and_prediction_columns_and_iou_is_nan_for_an_unseen_class():
    truth, pred = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    conf = confusion_matrix(pred, truth, 3)  # no ignore index: every pixel counts
    np.testing.assert_array_equal(conf, [[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    iou = class_iou(conf)
    np.testing.assert_allclose(iou[:2], [1 / 3, 2 / 4])
    assert np.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert mean_iou(np.zeros((3, 3), np.int64)) == 0.0


def _acc(u, c, ok, max_u=1.0):
    a = HonestyAccumulator(max_uncertainty=max_u)
    a.update(u, c, ok)
    return a


def test_auroc_is_1_when_every_error_is_more_uncertain_and_0_when_reversed():
    u = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    ok = np.array([1, 1, 1, 0, 0, 0], bool)
    assert _acc(u, np.full(6, 0.9), ok).auroc() == pytest.approx(1.0)
    assert _acc(u, np.full(6, 0.9), ~ok).auroc() == pytest.approx(0.0)


def test_auroc_of_uninformative_uncertainty_is_a_half():
    rng = np.random.default_rng(0)
    u = rng.random(200_000)
    ok = rng.random(200_000) < 0.7
    assert _acc(u, np.full(u.size, 0.8), ok).auroc() == pytest.approx(0.5, abs=0.01)
    assert _acc(np.full(1000, 0.3), np.full(1000, 0.8), rng.random(1000) < 0.5).auroc() == pytest.approx(0.5)  # all tied


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    u = rng.random(400)
    ok = rng.random(400) < 1 - u  # more uncertain, more often wrong
    pairs = (u[~ok][:, None] > u[ok][None, :]).mean()
    assert _acc(u, np.full(400, 0.5), ok).auroc() == pytest.approx(pairs, abs=0.005)
    assert _acc(u, np.full(400, 0.5), ok).auroc() > 0.6


def test_auroc_needs_both_kinds():
    assert _acc(np.array([0.1, 0.2]), np.array([0.9, 0.9]), np.array([True, True])).auroc() is None


def test_ece_near_zero_when_calibrated_and_large_when_confidently_wrong():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.3, 1.0, 300_000)
    calibrated = rng.random(conf.size) < conf  # right with probability = confidence
    assert _acc(np.zeros(conf.size), conf, calibrated).ece() < 0.01
    certain_right = _acc(np.zeros(1000), np.full(1000, 0.999), np.ones(1000, bool))
    assert certain_right.ece() < 0.002
    confidently_wrong = _acc(np.zeros(1000), np.full(1000, 0.99), np.zeros(1000, bool))
    assert confidently_wrong.ece() == pytest.approx(0.99, abs=1e-6)


def test_reliability_bins_report_accuracy_and_confidence():
    a = _acc(np.zeros(4), np.array([0.95, 0.96, 0.15, 0.12]), np.array([True, False, False, False]))
    bins = a.reliability()
    top = bins[-1]
    assert top["pixels"] == 2 and top["accuracy"] == 0.5 and top["confidence"] == pytest.approx(0.955)
    assert sum(b["pixels"] for b in bins) == 4


def test_accuracy_rises_as_the_most_uncertain_pixels_are_dropped():
    rng = np.random.default_rng(3)
    u = rng.random(100_000)
    ok = rng.random(u.size) < 1 - 0.8 * u
    curve = _acc(u, np.full(u.size, 0.5), ok).accuracy_vs_coverage(10)
    acc = [p["accuracy"] for p in curve]
    assert curve[-1]["coverage"] == pytest.approx(1.0)
    assert acc[0] > acc[-1] + 0.2 and all(a >= b - 0.01 for a, b in zip(acc, acc[1:]))


def test_streaming_equals_one_shot_and_skips_nodata():
    rng = np.random.default_rng(4)
    u, c, ok = rng.random(10_000) * 0.25, rng.random(10_000), rng.random(10_000) < 0.6
    u[:100] = np.nan  # nodata pixels
    whole = _acc(u, c, ok, max_u=0.25)
    parts = HonestyAccumulator(max_uncertainty=0.25)
    for lo in range(0, 10_000, 1234):
        parts.update(u[lo : lo + 1234], c[lo : lo + 1234], ok[lo : lo + 1234])
    assert parts.pixels == whole.pixels == 9_900
    assert parts.auroc() == whole.auroc() and parts.ece() == pytest.approx(whole.ece(), rel=1e-12)
