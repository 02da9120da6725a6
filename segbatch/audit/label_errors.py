"""Likely label errors: truth the model contradicts confidently and calmly, after confident learning's per-class thresholds.

A labelled pixel is suspect when the model's prediction differs from its
truth label, the model's confidence in that prediction is at least the
class's threshold, and the Monte-Carlo measure (uncertainty) is below the
audit's threshold: disagreement with low uncertainty points at the label,
disagreement with high uncertainty at a hard example.

The class thresholds come from a first pass over the store (bounded: a sum
and a count per class). With the store's `confidence` (the predicted class's
mean probability), class c's threshold is the mean confidence of the pixels
predicted as c where the truth agrees. With `probs`, it is the mean
probability of c over the pixels labelled c (confident learning's t_c), and
a pixel's disagreement is weighed by 1 - p(truth class) instead of the
prediction's confidence.

An item's label-issue score is the mean, over its labelled pixels, of each
suspect pixel's weight (0 when none is suspect); its swaps are counted per
(truth class, predicted class) pair.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONFIDENCE, PROBS = "confidence", "probs"
WHAT = {
    CONFIDENCE: "the predicted class's confidence (the store has no probs: a run with --outputs probs gives the truth class's probability)",
    PROBS: "the probability of the truth class (the store's probs)",
}


class ClassThresholds:
    """The first pass: per class, a sum and a count of the probabilities that define its threshold."""

    def __init__(self, k: int, mode: str) -> None:
        self.mode = mode
        self.sums = np.zeros(k, np.float64)
        self.counts = np.zeros(k, np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
        """Labelled pixels of one item: `scores` is the prediction's confidence (CONFIDENCE) or the (N, K) probabilities (PROBS)."""
        k = len(self.sums)
        if self.mode == PROBS:
            own = np.take_along_axis(scores, truth[:, None].astype(np.int64), axis=1)[:, 0]
            self.sums += np.bincount(truth, weights=own, minlength=k)[:k]
            self.counts += np.bincount(truth, minlength=k)[:k]
            return
        agree = pred == truth
        self.sums += np.bincount(pred[agree], weights=scores[agree], minlength=k)[:k]
        self.counts += np.bincount(pred[agree], minlength=k)[:k]

    def thresholds(self) -> np.ndarray:
        """Per class; +inf for a class never seen (none of its predictions can be suspect)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            t = self.sums / self.counts
        return np.where(self.counts > 0, t, np.inf)


@dataclass
class Judged:
    """One item's suspect pixels, their weights' mean (the score) and its class swaps."""

    suspect: np.ndarray  # bool, over the labelled pixels given
    pixels: int
    score: float


def judge(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray, measure: np.ndarray, thresholds: np.ndarray, calm_below: float, mode: str) -> Judged:
    """The suspect pixels among labelled ones (1-D arrays; `scores` (N, K) probabilities in PROBS mode) and the item's score."""
    n = len(pred)
    if mode == PROBS:
        p_pred = np.take_along_axis(scores, pred[:, None].astype(np.int64), axis=1)[:, 0]
        weight = 1.0 - np.take_along_axis(scores, truth[:, None].astype(np.int64), axis=1)[:, 0]
    else:
        p_pred = weight = scores
    suspect = (pred != truth) & (p_pred >= thresholds[pred]) & (measure < calm_below)
    score = float(np.asarray(weight, np.float64)[suspect].sum() / n) if n else 0.0
    return Judged(suspect, int(suspect.sum()), score)


@dataclass
class LabelErrors:
    """The second pass: per item the score (items.csv), the most likely mislabelled items, and the swaps across the store."""

    thresholds: np.ndarray
    mode: str
    calm_below: float  # the audit's threshold of its measure
    top: int
    swaps: np.ndarray = field(init=False)  # [truth, predicted] suspect pixels
    truth_pixels: np.ndarray = field(init=False)  # labelled pixels per truth class
    suspect_items: int = 0
    suspect_pixels: int = 0
    _heap: list[tuple[float, int, Any]] = field(default_factory=list)
    _count: int = 0

    def __post_init__(self) -> None:
        k = len(self.thresholds)
        self.swaps = np.zeros((k, k), np.int64)
        self.truth_pixels = np.zeros(k, np.int64)

    def add(self, item: Any, pred: np.ndarray, truth: np.ndarray, scores: np.ndarray, measure: np.ndarray) -> dict[str, Any]:
        """One item's labelled pixels: its columns for items.csv, and the item offered to the ranking."""
        k = len(self.thresholds)
        judged = judge(pred, truth, scores, measure, self.thresholds, self.calm_below, self.mode)
        self.truth_pixels += np.bincount(truth, minlength=k)[:k]
        if judged.pixels:
            self.swaps += np.bincount(truth[judged.suspect] * k + pred[judged.suspect], minlength=k * k)[: k * k].reshape(k, k)
            self.suspect_items += 1
            self.suspect_pixels += judged.pixels
            self._count += 1
            entry = (judged.score, -self._count, item)  # ties: the earlier item first
            if len(self._heap) < self.top:
                heapq.heappush(self._heap, entry)
            elif self.top and entry > self._heap[0]:
                heapq.heapreplace(self._heap, entry)
        n = len(pred)
        return {"suspect_pixels": judged.pixels, "suspect_share": judged.pixels / n if n else float("nan"), "label_issue_score": judged.score}

    def ranked(self) -> list[tuple[float, Any]]:
        """The items most likely mislabelled, highest score first."""
        return [(score, item) for score, _, item in sorted(self._heap, reverse=True)]

    def swap_table(self, classes: list[str], rows: int = 10) -> list[dict[str, Any]]:
        """The likely swaps, most suspect pixels first: truth says A where the model confidently says B."""
        k = len(classes)
        order = np.argsort(-self.swaps, axis=None, kind="stable")
        out = []
        for flat in order[:rows]:
            a, b = divmod(int(flat), k)
            n = int(self.swaps[a, b])
            if n == 0:
                break
            share = n / int(self.truth_pixels[a]) if self.truth_pixels[a] else float("nan")
            out.append({"truth": classes[a], "model": classes[b], "pixels": n, "share_of_truth_class": share})
        return out


def suspect_map(pred: np.ndarray, truth: np.ndarray, labelled: np.ndarray, scores: np.ndarray, measure: np.ndarray, errors: LabelErrors) -> np.ndarray:
    """(H, W) bool: an item's suspect pixels, for its thumbnail (`scores` (H, W) or (H, W, K) as the pass read them)."""
    out = np.zeros(pred.shape, bool)
    flat_scores = scores[labelled]
    judged = judge(
        pred[labelled].astype(np.int64), truth[labelled].astype(np.int64), flat_scores, measure[labelled], errors.thresholds, errors.calm_below, errors.mode
    )
    out[labelled] = judged.suspect
    return out
