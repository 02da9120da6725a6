"""Segmentation measures: confusion and IoU (shared with `segbatch train`), and streaming measures of whether
uncertainty is honest: AUROC for errors, calibration (ECE), accuracy vs coverage.

The honesty measures are accumulated in fixed histograms, chunk by chunk, so
a store of any size is measured in bounded memory; the only approximation is the
histogram's bin width, which bounds how finely ties between nearly equal
uncertainties are broken. Bins are spaced on a square-root scale: most pixels
have an uncertainty near 0 (samples that agree), where linear bins would lump
a fifth of a store into one bin; with 4,096 bins over [0, 0.25] the first bin
ends at 1.5e-8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np

from segbatch.errors import InputError


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(truth, pred) pixel counts, int64, over the pixels whose truth is a class (not `ignore_index`)."""
    if ignore_index is not None:
        valid = truth != ignore_index
        pred, truth = pred[valid], truth[valid]
    idx = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """Each class's intersection-over-union from a (truth, pred) confusion matrix; NaN for a class neither in truth nor prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean intersection-over-union over the classes seen in truth or prediction (0 when none is)."""
    iou = class_iou(confusion)
    seen = ~np.isnan(iou)
    return float(iou[seen].mean()) if seen.any() else 0.0


def value_bins(values: np.ndarray, top: float, bins: int) -> np.ndarray:
    """Bin indexes of non-negative values on a square-root scale over [0, top] (larger values go to the last bin)."""
    return cast(np.ndarray, np.clip((np.sqrt(np.maximum(values, 0.0) / top) * bins).astype(np.int64), 0, bins - 1))


def bin_edges(top: float, bins: int) -> np.ndarray:
    """The bins + 1 edges of `value_bins`, in the values' units."""
    return (np.arange(bins + 1) / bins) ** 2 * top


@dataclass
class HonestyAccumulator:
    """Histograms of uncertainty (for right and wrong pixels) and of confidence, filled chunk by chunk.

    Args:
        max_uncertainty: upper end of the uncertainty histogram (larger values land in the last bin);
            0.25 bounds the softmax variance, log(K) the entropy.
        uncertainty_bins: resolution of the AUROC and coverage curves.
        confidence_bins: bins of the reliability diagram (15, as is usual for ECE).
    """

    max_uncertainty: float
    uncertainty_bins: int = 4096
    confidence_bins: int = 15
    right: np.ndarray = field(init=False)
    wrong: np.ndarray = field(init=False)
    conf_count: np.ndarray = field(init=False)
    conf_sum: np.ndarray = field(init=False)
    conf_correct: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.max_uncertainty <= 0:
            raise InputError(f"max_uncertainty must be > 0, got {self.max_uncertainty}")
        self.right = np.zeros(self.uncertainty_bins, np.int64)
        self.wrong = np.zeros(self.uncertainty_bins, np.int64)
        self.conf_count = np.zeros(self.confidence_bins, np.int64)
        self.conf_sum = np.zeros(self.confidence_bins, np.float64)
        self.conf_correct = np.zeros(self.confidence_bins, np.int64)

    def update(self, uncertainty: np.ndarray, confidence: np.ndarray | None, correct: np.ndarray) -> None:
        """Add pixels: their uncertainty, their confidence (the winning class's mean probability; None when the store
        has none, which leaves the reliability diagram empty), and whether the label was right."""
        u = np.asarray(uncertainty, np.float64).ravel()
        ok = np.asarray(correct, bool).ravel()
        keep = np.isfinite(u)
        if confidence is not None:
            c = np.asarray(confidence, np.float64).ravel()
            keep &= np.isfinite(c)
            c = c[keep]
        u, ok = u[keep], ok[keep]
        ub = value_bins(u, self.max_uncertainty, self.uncertainty_bins)
        self.right += np.bincount(ub[ok], minlength=self.uncertainty_bins)
        self.wrong += np.bincount(ub[~ok], minlength=self.uncertainty_bins)
        if confidence is None:
            return
        cb = np.clip((c * self.confidence_bins).astype(np.int64), 0, self.confidence_bins - 1)
        self.conf_count += np.bincount(cb, minlength=self.confidence_bins)
        self.conf_sum += np.bincount(cb, weights=c, minlength=self.confidence_bins)
        self.conf_correct += np.bincount(cb, weights=ok, minlength=self.confidence_bins).astype(np.int64)

    @property
    def pixels(self) -> int:
        return int(self.right.sum() + self.wrong.sum())

    def since(self, earlier: HonestyAccumulator | None) -> HonestyAccumulator:
        """What was added after `earlier` (a copy taken then; None: from the start): one input's share of a job's pooled figures."""
        out = HonestyAccumulator(self.max_uncertainty, self.uncertainty_bins, self.confidence_bins)
        for name in ("right", "wrong", "conf_count", "conf_sum", "conf_correct"):
            now = getattr(self, name)
            setattr(out, name, now - getattr(earlier, name) if earlier is not None else now.copy())
        return out

    def auroc(self) -> float | None:
        """Probability that a wrong pixel is more uncertain than a right one (ties count half); None without both kinds."""
        n_right, n_wrong = self.right.sum(), self.wrong.sum()
        if n_right == 0 or n_wrong == 0:
            return None
        right_below = np.cumsum(self.right) - self.right  # right pixels in strictly lower bins
        return float(((right_below + 0.5 * self.right) * self.wrong).sum() / (n_right * n_wrong))

    def reliability(self) -> list[dict[str, float]]:
        """Per confidence bin: its range, pixel count, mean confidence and accuracy (the reliability diagram)."""
        out = []
        for b in range(self.confidence_bins):
            n = int(self.conf_count[b])
            out.append(
                {
                    "low": b / self.confidence_bins,
                    "high": (b + 1) / self.confidence_bins,
                    "pixels": n,
                    "confidence": float(self.conf_sum[b] / n) if n else float("nan"),
                    "accuracy": float(self.conf_correct[b] / n) if n else float("nan"),
                }
            )
        return out

    def ece(self) -> float | None:
        """Expected calibration error: the pixel-weighted mean |accuracy - confidence| over confidence bins."""
        total = self.conf_count.sum()
        if total == 0:
            return None
        filled = self.conf_count > 0
        gap = np.abs(self.conf_correct[filled] / self.conf_count[filled] - self.conf_sum[filled] / self.conf_count[filled])
        return float((gap * self.conf_count[filled]).sum() / total)

    def accuracy_vs_coverage(self, points: int = 20) -> list[dict[str, float]]:
        """Accuracy on the pixels kept after dropping the most uncertain ones, at coverages 1/points .. 1."""
        kept_right = np.cumsum(self.right)
        kept = kept_right + np.cumsum(self.wrong)
        total = kept[-1] if len(kept) else 0
        out = []
        for k in range(1, points + 1):
            coverage = k / points
            i = int(np.searchsorted(kept, coverage * total, side="left")) if total else 0
            i = min(i, len(kept) - 1)
            out.append(
                {"coverage": float(kept[i] / total) if total else 0.0, "accuracy": float(kept_right[i] / kept[i]) if total and kept[i] else float("nan")}
            )
        return out
