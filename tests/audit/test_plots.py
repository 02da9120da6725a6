"""The audit's plots: what they draw agrees with what they say."""

import numpy as np
import pytest

from segbatch.audit import plots


def test_confusion_cells_and_colour_bar_are_the_same_unit():
    matrix = np.array([[30, 10, 0], [0, 0, 0], [5, 5, 90]])
    fig = plots.confusion_figure(matrix, ["road", "sky", "car"])
    try:
        ax, bar = fig.axes
        image = ax.images[0]
        percent = 100 * matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        np.testing.assert_allclose(image.get_array(), percent)  # colours: % of the truth row
        assert image.get_clim() == (0, 100)  # the colour bar's scale
        assert "%" in bar.get_ylabel()
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert texts == {(0, 0): "75", (0, 1): "25", (2, 0): "5", (2, 1): "5", (2, 2): "90"}  # numbers: the same %
        assert max(bar.get_ylim()) == pytest.approx(100)
    finally:
        plots._pyplot().close(fig)


def test_coverage_draws_one_curve_per_measure_with_its_auroc():
    curve = [{"coverage": k / 4, "accuracy": 1 - k / 10} for k in range(1, 5)]
    curves = {"uncertainty": curve, "entropy": curve, "mutual_information": curve}
    fig = plots.coverage_figure(curves, {"uncertainty": 0.75, "entropy": 0.9, "mutual_information": None}, ranked="entropy")
    try:
        ax = fig.axes[0]
        assert [line.get_label() for line in ax.lines] == ["uncertainty (AUROC 0.750)", "entropy (AUROC 0.900) [ranking]", "mutual_information"]
        assert ax.lines[1].get_linewidth() > ax.lines[0].get_linewidth()
    finally:
        plots._pyplot().close(fig)


def test_every_plot_keeps_its_labels_inside_the_picture(tmp_path, monkeypatch):
    """Titles, tick labels, axis labels and legends lie inside the saved figure, long class names too (3 px of slack: a
    rotated label's box is a little larger than its glyphs; with no layout, the class and confusion plots run 47 and 88 px
    out)."""
    plt = plots._pyplot()
    close, saved = plt.close, []
    monkeypatch.setattr(plt, "close", saved.append)  # keep each figure to measure after its save
    names = [f"a long class name {i}" for i in range(11)]
    curve = [{"coverage": k / 4, "accuracy": 1 - k / 10} for k in range(1, 5)]
    bins = [{"low": k / 10, "high": (k + 1) / 10, "pixels": 10, "accuracy": k / 10, "confidence": (k + 0.5) / 10} for k in range(10)]
    series = {"time": [0.0, 1.0, 2.0], "p95": [0.9, 0.8, 0.7], "mean": [0.5, 0.4, 0.3], "above_threshold": [0.1, 0.2, 0.3], "frames_per_point": [4]}
    made = [
        plots.histogram(tmp_path / "h.png", np.arange(64.0), 2.4, "entropy", 1.0),
        plots.classes(tmp_path / "c.png", names, [(200, 10, 10)] * 11, np.arange(11.0), np.linspace(0, 1, 11), "entropy"),
        plots.timeline(tmp_path / "t.png", series, "entropy"),
        plots.reliability(tmp_path / "r.png", bins, 0.05),
        plots.coverage(tmp_path / "v.png", {"uncertainty": curve, "entropy": curve}, {"uncertainty": 0.75, "entropy": 0.9}, "entropy"),
        plots.confusion(tmp_path / "m.png", np.arange(121).reshape(11, 11), names),
    ]
    assert made == ["h.png", "c.png", "t.png", "r.png", "v.png", "m.png"] and len(saved) == 6
    for fig, name in zip(saved, made):
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            box = ax.get_tightbbox(renderer)
            outside = max(-box.x0, -box.y0, box.x1 - fig.bbox.x1, box.y1 - fig.bbox.y1)
            assert outside <= 3, (name, outside)
        assert (tmp_path / name).stat().st_size > 0
        close(fig)
