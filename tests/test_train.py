import json

import numpy as np
import pytest
from PIL import Image

from segbatch.train import median_frequency_weights


def _blobs(root, count, size=32, seed=0):
    """Images of a noisy background (class 0) with a red square (1) and a blue disc (2)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for k in range(count):
        img = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        r, c, s = rng.integers(0, size - 12), rng.integers(0, size - 12), rng.integers(6, 12)
        mask[r : r + s, c : c + s] = 1
        cy, cx, rad = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(3, 6)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2] = 2
        img[mask == 1] = (220, 40, 40) + rng.integers(-20, 20, (int((mask == 1).sum()), 3))
        img[mask == 2] = (40, 40, 220) + rng.integers(-20, 20, (int((mask == 2).sum()), 3))
        Image.fromarray(img).save(root / "images" / f"{k:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k:03d}.png")


def test_median_frequency_weights_follow_the_definition():
    # class 0: 90 px over images totalling 100 px; class 1: 10 px over one 50-px image; class 2: absent
    w = median_frequency_weights(np.array([90, 10, 0]), np.array([100, 50, 0]))
    freq = np.array([0.9, 0.2])
    assert w[2] == 0
    assert np.allclose(w[:2], np.median(freq) / freq)


def test_training_lowers_the_loss_and_beats_chance(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 48)
    out = tmp_path / "m.pt"
    r = runner.invoke(
        cli,
        [
            "train",
            "--images",
            str(tmp_path / "data/images"),
            "--masks",
            str(tmp_path / "data/masks"),
            "--out",
            str(out),
            "--width",
            "0.25",
            "--epochs",
            "12",
            "--batch-size",
            "4",
            "--lr",
            "0.05",
            "--val-fraction",
            "0.25",
            "--class-names",
            "bg,red,blue",
            "--dropout",
            "none",
        ],  # a 16-channel net at 32x32 learns slowly through 0.5 dropout; keep the test short
    )
    assert r.exit_code == 0, r.output
    epochs = [line for line in r.output.splitlines() if line.startswith("epoch ")]
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in epochs]
    mious = [float(line.split("mIoU ")[1].split()[0]) for line in epochs]
    assert len(losses) == 12
    assert losses[-1] < 0.4 * losses[0]
    assert max(mious) > 0.7  # three classes: chance is about 0.33 at best
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["classes"] == ["bg", "red", "blue"]
    assert info["provenance"]["training"]["val_miou"] == pytest.approx(max(mious), abs=1e-3)


def test_mask_size_mismatch_names_the_file(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 3)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "data/masks/001.png")
    r = runner.invoke(cli, ["train", "--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks"), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2
    assert "001.png" in r.output and "mask is 10x10" in r.output
    assert not (tmp_path / "m.pt").exists()


def test_class_id_out_of_range_names_the_file(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 3)
    bad = np.zeros((32, 32), np.uint8)
    bad[0, 0] = 7
    Image.fromarray(bad).save(tmp_path / "data/masks/002.png")
    r = runner.invoke(
        cli, ["train", "--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks"), "--out", str(tmp_path / "m.pt"), "--classes", "3"]
    )
    assert r.exit_code == 2
    assert "002.png" in r.output and "class id 7" in r.output


def test_image_without_mask_is_named(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 3)
    (tmp_path / "data/masks/000.png").unlink()
    r = runner.invoke(cli, ["train", "--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks"), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "000.png" in r.output


def test_palette_png_masks_give_their_indices(tmp_path):
    from segbatch.sources.images import read_mask

    mask = np.array([[0, 1], [2, 255]], np.uint8)
    im = Image.fromarray(mask, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_crops_with_only_ignored_pixels_are_skipped_not_fatal(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 8)
    for k in range(3):  # three masks are all "ignore"; at least three labelled images remain for training
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / f"data/masks/{k:03d}.png")
    r = runner.invoke(
        cli,
        [
            "train",
            "--images",
            str(tmp_path / "data/images"),
            "--masks",
            str(tmp_path / "data/masks"),
            "--out",
            str(tmp_path / "m.pt"),
            "--width",
            "0.25",
            "--epochs",
            "2",
            "--batch-size",
            "1",
            "--classes",
            "3",
            "--val-fraction",
            "0.25",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.pt").exists()


def test_an_image_with_other_bands_is_named(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 3)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "data/images/002.png")  # greyscale among RGB
    r = runner.invoke(cli, ["train", "--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks"), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "002.png" in r.output and "bands" in r.output


def test_missing_output_folder_fails_before_training(runner, cli, tmp_path):
    _blobs(tmp_path / "data", 3)
    r = runner.invoke(cli, ["train", "--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks"), "--out", str(tmp_path / "no/m.pt")])
    assert r.exit_code == 2 and "does not exist" in r.output and "epoch" not in r.output
