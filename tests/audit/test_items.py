"""Pure pieces of the audit: per-item statistics, histogram quantiles, truth masks and matching."""

import numpy as np
import pytest

from segbatch.audit.items import Item, item_stats
from segbatch.audit.metrics import bin_edges, value_bins
from segbatch.audit.report import csv_cell, quantile_from_histogram
from segbatch.audit.scan import column_name
from segbatch.audit.truth import FolderTruth, labelled_mask


def test_item_stats_over_valid_pixels_only():
    labels = np.array([[0, 0, 1, 255]], np.uint8)
    unc = np.array([[0.1, 0.3, 0.5, np.nan]], np.float32)
    ent = unc * 2
    s = item_stats(labels, {"uncertainty": unc, "entropy": ent}, "uncertainty", threshold=0.2, num_classes=3)
    assert s.valid_pixels == 3 and s.above == 2
    assert s.values["uncertainty"].tolist() == pytest.approx([0.1, 0.3, 0.5])  # the NaN of the nodata pixel is not there
    assert s.measures["uncertainty"] == pytest.approx((0.3, np.percentile([0.1, 0.3, 0.5], 95)))
    assert s.measures["entropy"][0] == pytest.approx(0.6)
    assert s.above_threshold == pytest.approx(2 / 3)
    assert s.class_pixels.tolist() == [2, 1, 0]
    assert s.class_measure_mean[:2] == pytest.approx([0.2, 0.5]) and np.isnan(s.class_measure_mean[2])


def test_item_stats_of_an_all_nodata_item():
    s = item_stats(np.full((2, 2), 255, np.uint8), {"entropy": np.full((2, 2), np.nan)}, "entropy", 0.1, 4)
    assert s.valid_pixels == 0 and np.isnan(s.above_threshold) and s.class_pixels.sum() == 0


def test_square_root_bins_resolve_small_values_and_invert():
    edges = bin_edges(0.25, 4096)
    assert edges[1] < 2e-8 and edges[-1] == pytest.approx(0.25)
    v = np.array([0.0, 1e-6, 1e-3, 0.1, 0.25, 9.0])
    b = value_bins(v, 0.25, 4096)
    assert (np.diff(b[:5]) > 0).all() and b[4] == b[5] == 4095  # the top and beyond: the last bin
    assert all(edges[i] <= x < edges[i + 1] for i, x in zip(b[:4], v[:4]))


def test_quantile_from_histogram_is_within_a_bin():
    rng = np.random.default_rng(0)
    v = rng.exponential(0.01, 100_000)
    counts = np.bincount(value_bins(v, 0.25, 4096), minlength=4096)
    for q in (0.5, 0.95, 0.99):
        assert quantile_from_histogram(counts, 0.25, q) == pytest.approx(np.quantile(v, q), rel=0.01)
    assert np.isnan(quantile_from_histogram(np.zeros(8, np.int64), 1.0, 0.5))


def test_labelled_pixels_exclude_nodata_void_and_ignore_index():
    labels = np.array([0, 1, 255, 2, 1], np.uint8)
    truth = np.array([0, 3, 1, -1, 2])
    assert labelled_mask(labels, truth, 3, None).tolist() == [True, False, False, False, True]
    assert labelled_mask(labels, truth, 3, 2).tolist() == [True, False, False, False, False]


def test_column_names():
    assert column_name("Road marking / lane") == "road_marking_lane"
    assert column_name("???") == "class"


def test_folder_truth_matches_by_relative_path_then_unique_stem(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mask = np.ones((4, 6), np.uint8)
    Image.fromarray(mask).save(tmp_path / "a" / "x.png")
    Image.fromarray(mask * 2).save(tmp_path / "b" / "x.png")
    Image.fromarray(mask * 3).save(tmp_path / "b" / "solo.png")
    truth = FolderTruth(tmp_path)

    def item(path, h=4, w=6):
        return Item(0, (), path, {"path": path, "height": h, "width": w})

    assert truth.read(item("a/x.jpg"))[0, 0] == 1  # same relative path, other suffix
    assert truth.read(item("b/x.jpg"))[0, 0] == 2
    assert truth.read(item("elsewhere/solo.jpg"))[0, 0] == 3  # a unique stem
    assert truth.read(item("c/x.jpg")) is None  # "x" is ambiguous: no truth rather than the wrong one
    from segbatch.errors import DataError

    with pytest.raises(DataError, match="truth is 6x4"):
        truth.read(item("a/x.png", h=5, w=6))


def test_csv_cells_escape_formula_like_text_only():
    for text in ("=1+1.png", "+cmd", "-2.png", "@sum", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("plain/a=b.png") == "plain/a=b.png" and csv_cell("frame 12") == "frame 12"
    assert csv_cell(-0.5) == "-0.5" and csv_cell(-3) == -3 and csv_cell(float("nan")) == ""  # numbers stay numbers
