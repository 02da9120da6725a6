"""Tests for the synthetic street-scene generator behind the demo model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segbatch.demo import scenes
from segbatch.demo.scenes import CLASSES, PALETTE, make_scene, render, render_image, render_video, write_dataset

SKY, ROAD, TREE = CLASSES.index("sky"), CLASSES.index("road"), CLASSES.index("tree")


@pytest.fixture(scope="module")
def stills() -> list[tuple[np.ndarray, np.ndarray]]:
    """Twenty 120x160 scenes, shared by the statistical tests."""
    return [render_image(seed, 120, 160) for seed in range(20)]


def test_classes_and_palette_follow_camvid() -> None:
    assert len(CLASSES) == len(PALETTE) == 11
    colours = dict(zip(CLASSES, PALETTE, strict=True))
    assert colours["road"] == (128, 64, 128) and colours["cyclist"] == (0, 128, 192)
    assert len(set(PALETTE)) == 11


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (61, 17), (120, 160)])
def test_shapes_dtypes_and_label_range(size: tuple[int, int]) -> None:
    image, mask = render_image(3, *size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert mask.shape == size and mask.dtype == np.uint8
    assert mask.max() <= 10


def test_sizes_below_16_are_refused() -> None:
    with pytest.raises(ValueError):
        render_image(0, 15, 40)


def test_same_seed_same_pixels_different_seed_different_pixels() -> None:
    a, b = render_image(7, 48, 64), render_image(7, 48, 64)
    assert make_scene(7) == make_scene(7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], render_image(8, 48, 64)[0])


def test_every_class_appears_over_twenty_scenes(stills) -> None:
    seen = set().union(*(np.unique(mask).tolist() for _, mask in stills))
    assert seen == set(range(11))


def test_sky_on_top_road_at_bottom(stills) -> None:
    for _, mask in stills:
        rows = np.nonzero(mask == SKY)[0]
        assert rows.size and rows.max() < 60  # the horizon is never below mid-height
        assert np.nonzero(mask == ROAD)[0].min() >= 120 * 0.35 - 1
        assert mask[-1, 80] == ROAD  # the camera drives on the road
        assert (mask[:12] == SKY).mean() > 0.2


def test_labels_match_what_was_painted(stills) -> None:
    sky_brighter = 0
    tree_green = []
    for image, mask in stills:
        pixels = image.astype(np.float64)
        sky, road = pixels[mask == SKY].mean(0), pixels[mask == ROAD].mean(0)
        sky_brighter += sky.mean() > road.mean() + 20
        if (mask == TREE).any():
            tree = pixels[mask == TREE].mean(0)
            tree_green.append(tree[1] - tree[2])
    assert sky_brighter >= 18
    assert np.mean(tree_green) > 15 and len(tree_green) >= 10


def test_video_moves_smoothly_forward() -> None:
    frames = list(render_video(5, 41, 60, 80, speed=0.25))
    assert len(frames) == 41
    scene = make_scene(5)
    assert np.array_equal(frames[20][0], render(scene, 60, 80, 20 * 0.25)[0])

    def diff(i: int, j: int) -> float:
        return float(np.abs(frames[i][0].astype(np.int16) - frames[j][0]).mean())

    def relabelled(i: int, j: int) -> float:
        return float((frames[i][1] != frames[j][1]).mean())

    assert np.mean([diff(i, i + 1) for i in range(40)]) < np.mean([diff(i, i + 30) for i in range(10)]) / 2.5
    assert np.mean([relabelled(i, i + 1) for i in range(40)]) < np.mean([relabelled(i, i + 30) for i in range(10)]) / 3


def test_street_has_content_deep_into_a_video() -> None:
    scene = make_scene(2)
    for t in (300.0, 600.0):
        classes = set(np.unique(render(scene, 90, 120, t)[1]).tolist())
        assert {CLASSES.index("building"), CLASSES.index("car"), ROAD} <= classes


def test_write_dataset_pairs_images_and_masks(tmp_path) -> None:
    write_dataset(tmp_path, 3, 40, 56, seed=4)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == names
    first = None
    for k, name in enumerate(names):
        with Image.open(tmp_path / "images" / name) as im, Image.open(tmp_path / "masks" / name) as mk:
            assert im.mode == "RGB" and mk.mode == "L" and im.size == mk.size == (56, 40)
            image, mask = np.asarray(im), np.asarray(mk)
        expected = render_image(scenes._dataset_seed(4, k), 40, 56)
        assert np.array_equal(image, expected[0]) and np.array_equal(mask, expected[1])
        assert mask.max() <= 10
        if first is None:
            first = image
        else:
            assert not np.array_equal(image, first)
