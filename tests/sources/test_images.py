"""The image-folder plan: listing, headers, unreadable files, the listing digest; and how an image is fitted to a model."""

import numpy as np
import pytest

from segbatch.engine.images import model_input, plan_image_units, unit_images_for
from segbatch.errors import DataError, InputError
from segbatch.sources.images import probe_folder
from tests.helpers.folders import pixels, write_image, write_mixed_folder


def test_plan_lists_sorted_relative_paths_with_header_sizes(tmp_path):
    plan = probe_folder(write_mixed_folder(tmp_path / "mixed"))
    assert plan.paths == ("a.png", "b.jpg", "nested/c.png", "nested/deeper/d.tif", "nested/four.tif", "nested/truncated.jpg")
    assert plan.shapes == ((40, 56, 3), (64, 48, 3), (30, 50, 1), (32, 40, 3), (24, 24, 4), (36, 44, 3))
    assert (plan.images, plan.max_height, plan.max_width) == (6, 64, 56)
    assert [name for name, _ in plan.unreadable] == ["corrupt.png"] and "unreadable image" in plan.unreadable[0][1]
    assert plan.root == str((tmp_path / "mixed").resolve())


def test_listing_digest_follows_names_and_sizes(tmp_path):
    root = tmp_path / "f"
    write_image(root / "a.png", pixels(1, 20, 20))
    first = probe_folder(root).listing_sha256
    assert probe_folder(root).listing_sha256 == first
    write_image(root / "a.png", pixels(1, 20, 21))
    resized = probe_folder(root).listing_sha256
    assert resized != first
    (root / "a.png").rename(root / "b.png")
    assert probe_folder(root).listing_sha256 not in (first, resized)


@pytest.mark.parametrize("make", [lambda d: None, lambda d: (d / "notes.txt").write_text("hi"), lambda d: (d / "x.png").write_bytes(b"nonsense")])
def test_a_folder_without_readable_images_is_an_input_error(tmp_path, make):
    root = tmp_path / "empty"
    root.mkdir()
    make(root)
    with pytest.raises(InputError, match="no images|none of its"):
        probe_folder(root)


def test_grey_images_are_repeated_for_an_rgb_model_and_other_band_counts_refused(tmp_path):
    grey = pixels(1, 8, 10, bands=1)
    x = model_input(grey, 3, tmp_path / "g.png")
    assert x.shape == (3, 8, 10) and x.dtype == np.float32
    assert (x[0] == x[1]).all() and (x[0] == x[2]).all() and np.allclose(x[0], grey[:, :, 0] / 255)
    assert model_input(pixels(1, 8, 10), 3, tmp_path / "c.png").shape == (3, 8, 10)
    with pytest.raises(DataError, match="4 bands but the model takes 3"):
        model_input(pixels(1, 8, 10, bands=4), 3, tmp_path / "f.tif")
    with pytest.raises(DataError, match="3 bands but the model takes 1"):
        model_input(pixels(1, 8, 10), 1, tmp_path / "c.png")


def test_units_are_consecutive_runs_of_images():
    assert unit_images_for(6, 2) == 1 and unit_images_for(48, 1) == 6 and unit_images_for(10_000, 4) == 16
    units = plan_image_units(10, 4)
    assert [(u.id, u.start, u.stop) for u in units] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
