"""The label-error search's pure pieces: class thresholds, what makes a pixel suspect, the score, the swaps, the ranking."""

from __future__ import annotations

import numpy as np
import pytest

from segbatch.audit.label_errors import CONFIDENCE, PROBS, ClassThresholds, LabelErrors, judge


def test_confidence_thresholds_are_the_mean_confidence_of_correct_predictions_per_class():
    t = ClassThresholds(3, CONFIDENCE)
    pred = np.array([0, 0, 0, 1, 1])
    truth = np.array([0, 0, 1, 1, 0])
    t.add(pred, truth, np.array([0.9, 0.7, 0.99, 0.6, 0.95]))
    got = t.thresholds()
    assert got[0] == pytest.approx(0.8) and got[1] == pytest.approx(0.6)  # disagreeing pixels do not count
    assert got[2] == np.inf  # never predicted right: none of its predictions can be suspect


def test_probs_thresholds_are_the_mean_probability_of_each_class_over_its_labelled_pixels():
    t = ClassThresholds(2, PROBS)
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    t.add(np.array([0, 1, 1]), np.array([0, 0, 1]), probs)
    assert t.thresholds() == pytest.approx([0.6, 0.8])


def test_a_pixel_is_suspect_only_when_the_model_disagrees_confidently_and_calmly():
    thresholds = np.array([0.8, 0.8])
    pred, truth = np.array([1, 1, 1, 0]), np.array([0, 0, 0, 0])
    conf = np.array([0.9, 0.7, 0.9, 0.99])
    calm = np.array([0.01, 0.01, 0.2, 0.01])  # the third is unsure: a hard example, not a label error
    judged = judge(pred, truth, conf, calm, thresholds, calm_below=0.1, mode=CONFIDENCE)
    assert judged.suspect.tolist() == [True, False, False, False]
    assert judged.score == pytest.approx(0.9 / 4)  # the suspect pixel's confidence over the item's labelled pixels


def test_with_probs_a_disagreement_weighs_one_minus_the_truth_class_probability():
    probs = np.array([[0.05, 0.95], [0.6, 0.4]])
    judged = judge(np.array([1, 0]), np.array([0, 0]), probs, np.zeros(2), np.array([0.5, 0.5]), calm_below=0.1, mode=PROBS)
    assert judged.suspect.tolist() == [True, False]
    assert judged.score == pytest.approx(0.95 / 2)


def test_swaps_count_truth_against_prediction_and_the_ranking_keeps_the_top_items():
    errors = LabelErrors(np.array([0.5, 0.5, 0.5]), CONFIDENCE, calm_below=1.0, top=2)
    calm = np.zeros(4)
    for item, wrong in enumerate([0, 1, 3, 2]):  # item i has `wrong` pixels labelled 0 that the model says are 2
        pred = np.array([2] * wrong + [0] * (4 - wrong))
        row = errors.add(item, pred, np.zeros(4, np.int64), np.full(4, 0.9), calm)
        assert row["suspect_pixels"] == wrong and row["suspect_share"] == wrong / 4
    assert [item for _, item in errors.ranked()] == [2, 3]  # the two highest scores, highest first; bounded by top
    assert errors.suspect_items == 3 and errors.suspect_pixels == 6
    swaps = errors.swap_table(["a", "b", "c"])
    assert swaps == [{"truth": "a", "model": "c", "pixels": 6, "share_of_truth_class": 6 / 16}]
