"""What a relabelling queue folder must be for FiftyOne and CVAT to import it (their documented layouts)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def check_layout(queue: Path, classes: list[str], palette: list[list[int]]) -> list[dict[str, str]]:
    """The folder as each tool's documentation lays it out; returns the manifest's rows."""
    rows = list(csv.DictReader((queue / "manifest.csv").open()))
    names = [r["name"] for r in rows]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1)) and names == sorted(names)
    # FiftyOne ImageSegmentationDirectory: data/<name>.<ext> and labels/<name>.png, class-index masks; mask_targets
    assert sorted(p.stem for p in (queue / "data").iterdir()) == names == sorted(p.stem for p in (queue / "labels").iterdir())
    assert json.loads((queue / "mask_targets.json").read_text()) == {str(i): n for i, n in enumerate(classes)}
    # CVAT Segmentation mask 1.1: labelmap.txt (label:r,g,b:parts:actions), ImageSets/Segmentation/default.txt, SegmentationClass/
    lines = [line for line in (queue / "labelmap.txt").read_text().splitlines() if not line.startswith("#")]
    colours = {}
    for line in lines:
        name, rgb, parts, actions = line.split(":")
        assert parts == actions == ""
        colours[name] = tuple(int(v) for v in rgb.split(","))
    assert list(colours) == ["background", *classes] and len(set(colours.values())) == len(colours)
    assert [tuple(c) for c in palette] == [colours[n] for n in classes]
    assert (queue / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == names
    index = {colours[n]: i for i, n in enumerate(classes)} | {colours["background"]: 255}
    for name in names:
        mask = np.asarray(Image.open(queue / "labels" / f"{name}.png"))
        assert mask.dtype == np.uint8 and mask.ndim == 2
        coloured = np.asarray(Image.open(queue / "SegmentationClass" / f"{name}.png").convert("RGB"))
        back = np.vectorize(lambda r, g, b: index[(r, g, b)])(coloured[..., 0], coloured[..., 1], coloured[..., 2])
        assert np.array_equal(back, mask)  # the colours say the same classes as the index mask
        assert (queue / "uncertainty" / f"{name}.png").is_file()
    return rows
