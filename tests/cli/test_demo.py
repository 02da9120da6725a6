import json

import numpy as np
from PIL import Image

from segbatch.demo.scenes import CLASSES, PALETTE


def test_demo_scenes_writes_a_training_set(runner, cli, tmp_path):
    r = runner.invoke(cli, ["demo", "scenes", "--out", str(tmp_path / "s"), "--count", "3", "--size", "41x57", "--seed", "5"])
    assert r.exit_code == 0, r.output
    images = sorted((tmp_path / "s/images").iterdir())
    masks = sorted((tmp_path / "s/masks").iterdir())
    assert [p.name for p in images] == [p.name for p in masks] == ["00000.png", "00001.png", "00002.png"]
    assert np.asarray(Image.open(images[0])).shape == (41, 57, 3)
    assert np.asarray(Image.open(masks[0])).max() < len(CLASSES)
    classes = json.loads((tmp_path / "s/classes.json").read_text())
    assert classes["names"] == list(CLASSES) and classes["palette"] == [list(c) for c in PALETTE]


def test_demo_scenes_refuses_a_tiny_size(runner, cli, tmp_path):
    r = runner.invoke(cli, ["demo", "scenes", "--out", str(tmp_path / "s"), "--count", "1", "--size", "8x8"])
    assert r.exit_code == 2 and "16x16" in r.output
