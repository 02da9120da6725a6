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
