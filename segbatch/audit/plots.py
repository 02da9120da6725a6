"""The audit's PNG plots (matplotlib, no display needed): distribution, classes, timeline, and the honesty plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path.name


def histogram(path: Path, counts: np.ndarray, top: float, measure: str, threshold: float) -> str:
    """Pixels per value of the measure (log scale), with the threshold marked."""
    from segbatch.audit.metrics import bin_edges

    plt = _pyplot()
    nonzero = np.flatnonzero(counts)
    last = int(nonzero[-1]) + 1 if nonzero.size else 1
    # 100 equal-width bars up to the largest value seen, from the square-root-spaced counts
    fine = bin_edges(top, len(counts))
    edges = np.linspace(0, fine[last], 101)
    owner = np.clip(np.searchsorted(edges, (fine[:-1] + fine[1:]) / 2, side="right") - 1, 0, 99)
    merged = np.bincount(owner[:last], weights=counts[:last], minlength=100)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(edges[:-1], merged, width=np.diff(edges), align="edge", color="#5b4a9b")
    ax.axvline(threshold, color="#d9534f", lw=1.5, label=f"threshold {threshold:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel(measure)
    ax.set_ylabel("pixels")
    ax.set_title(f"Distribution of {measure}")
    ax.legend()
    return _save(fig, path)


def classes(path: Path, names: Sequence[str], palette: Sequence[Sequence[int]], pixels: np.ndarray, mean: np.ndarray, measure: str) -> str:
    """Per class: mean measure over its predicted pixels, and its share of the pixels."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    colours = [np.asarray(palette[i], float) / 255 if i < len(palette) else (0.5, 0.5, 0.5) for i in range(len(names))]
    y = np.arange(len(names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 0.35 * len(names) + 1.4), sharey=True)
    a.barh(y, np.nan_to_num(mean), color=colours, edgecolor="black", lw=0.4)
    a.set_yticks(y, names)
    a.invert_yaxis()
    a.set_xlabel(f"mean {measure}")
    a.xaxis.set_major_locator(MaxNLocator(4))
    a.set_title(f"Mean {measure} per predicted class")
    share = pixels / max(1, pixels.sum())
    b.barh(y, share * 100, color=colours, edgecolor="black", lw=0.4)
    b.set_xlabel("% of pixels")
    b.set_title("Predicted class share")
    return _save(fig, path)


def timeline(path: Path, points: dict[str, list[float]], measure: str) -> str:
    """A video's uncertainty over time: mean and 95th percentile per frame, and the fraction above the threshold."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 4.8), sharex=True)
    t = points["time"]
    a.plot(t, points["p95"], color="#f0ad4e", lw=1, label="95th percentile")
    a.plot(t, points["mean"], color="#5b4a9b", lw=1.2, label="mean")
    a.set_ylabel(measure)
    a.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize="small")  # above the axes: it covers no curve
    step = int(points["frames_per_point"][0])
    a.set_title(f"{measure.capitalize()} over time" + (f" (each point {step} frames)" if step > 1 else ""), loc="left")
    b.plot(t, np.asarray(points["above_threshold"]) * 100, color="#d9534f", lw=1)
    b.set_ylabel("% above threshold")
    b.set_xlabel("time (s)")
    return _save(fig, path)


def reliability(path: Path, bins: list[dict[str, float]], ece: float) -> str:
    """Accuracy against confidence per bin; a calibrated model follows the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    filled = [b for b in bins if b["pixels"]]
    lows = [b["low"] for b in filled]
    width = [b["high"] - b["low"] for b in filled]
    ax.bar(lows, [b["accuracy"] for b in filled], width=width, align="edge", color="#5b4a9b", edgecolor="black", lw=0.4, label="accuracy")
    ax.bar(
        lows,
        [abs(b["confidence"] - b["accuracy"]) for b in filled],
        bottom=[min(b["confidence"], b["accuracy"]) for b in filled],
        width=width,
        align="edge",
        color="#d9534f",
        alpha=0.45,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (mean probability of the label)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def coverage_figure(curves: dict[str, list[dict[str, float]]], auroc: dict[str, float | None] | None = None, ranked: str | None = None) -> Any:
    """Accuracy on the pixels kept after dropping the most uncertain, one curve per measure (AUROC in the legend;
    the ranking measure drawn thicker): the measure that finds errors best rises highest to the left."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for name, points in curves.items():
        accuracy = [np.nan if p["accuracy"] is None else p["accuracy"] for p in points]
        score = (auroc or {}).get(name)
        label = name + (f" (AUROC {score:.3f})" if score is not None else "") + (" [ranking]" if name == ranked else "")
        ax.plot([p["coverage"] * 100 for p in points], accuracy, marker="o", ms=3, lw=2.2 if name == ranked else 1.2, label=label)
    ax.set_xlabel("% of pixels kept (most uncertain dropped first)")
    ax.set_ylabel("accuracy on kept pixels")
    ax.set_title("Accuracy vs coverage, per measure")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def coverage(path: Path, curves: dict[str, list[dict[str, float]]], auroc: dict[str, float | None] | None = None, ranked: str | None = None) -> str:
    """coverage_figure as a PNG."""
    return _save(coverage_figure(curves, auroc, ranked), path)


def confusion_figure(matrix: np.ndarray, names: Sequence[str]) -> Any:
    """The confusion matrix, each truth row normalised to 100 %: the cells' numbers, their colours and the colour
    bar are all the same unit (% of the truth row)."""
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    percent = 100 * np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    side = 0.45 * len(names) + 2.2
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(percent, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if percent[i, j] >= 0.5:
                    ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white" if percent[i, j] < 60 else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("% of the truth row's pixels")
    ax.set_title("Confusion (% of each truth row)")
    return fig


def confusion(path: Path, matrix: np.ndarray, names: Sequence[str]) -> str:
    """confusion_figure as a PNG."""
    return _save(confusion_figure(matrix, names), path)
