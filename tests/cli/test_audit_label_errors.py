"""`segbatch audit --truth` finds injected label errors: the demo model's run over its own street scenes, some of whose masks
had classes swapped in a region and others random labels in a block (tests/helpers/label_noise.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from tests.helpers.label_noise import write_noisy_dataset
from tests.helpers.queue import check_layout
from tests.helpers.stores import invoke, run

COUNT, H, W = 32, 240, 320


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """32 demo scenes, 4 with classes swapped and 4 with a block of noise in their masks."""
    return write_noisy_dataset(tmp_path_factory.mktemp("noisy"), COUNT, H, W, swapped=4, noisy=4)


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


@pytest.mark.parametrize("outputs", [(), ("--outputs", "probs")], ids=["confidence", "probs"])
def test_the_injected_label_errors_rank_above_the_clean_items(ray_address, runner, cli, dataset, outputs, tmp_path):
    images, masks, corrupted = dataset
    store, report = tmp_path / "run.zarr", tmp_path / "report"
    r = run(runner, cli, "--input", images, "--out", store, "--samples", 4, *outputs, "--address", ray_address)  # the demo model
    assert r.exit_code == 0, r.output
    queue = tmp_path / "queue"
    r = invoke(runner, cli, "audit", store, "--report", report, "--truth", masks, "--top", 8, "--queue", queue, "--queue-size", 6, "--quiet")
    assert r.exit_code == 0, r.output

    rows = list(csv.DictReader((report / "items.csv").open()))
    assert len(rows) == COUNT
    scores = np.array([float(row["label_issue_score"]) for row in rows])
    injected = np.array([Path(row["name"]).name in corrupted for row in rows])
    assert _auroc(scores, injected) >= 0.9
    errors = json.loads((report / "summary.json").read_text())["truth"]["label_errors"]
    assert errors["scores"] == ("probs" if outputs else "confidence")
    assert errors["weighed_by"].startswith("the probability of the truth class" if outputs else "the predicted class")
    ranked = [e["name"] for e in errors["ranked"]]
    assert len(ranked) == 8 and sum(Path(n).name in corrupted for n in ranked) >= 6  # precision at the number injected
    assert ("pavement", "road") in [(s["truth"], s["model"]) for s in errors["swaps"][:3]]  # the injected road -> pavement swap
    first = errors["ranked"][0]["pictures"]
    assert set(first) == {"input", "truth", "prediction", "suspect"} and all((report / p).is_file() for p in first.values())
    page = (report / "index.html").read_text()
    assert "Likely label errors" in page and "Likely swaps" in page and first["suspect"] in page

    # the queue: by label errors (truth given), the same order as the report's ranking, images and masks as they are
    root = zarr.open_group(str(store), mode="r")
    queued = check_layout(queue, root.attrs["segbatch"]["model"]["classes"], root.attrs["segbatch"]["model"]["palette"])
    assert [q["item"] for q in queued] == ranked[:6] and all(q["why"].startswith("likely mislabelled") for q in queued)
    index = {row["name"]: int(row["item"]) for row in rows}
    for q in queued:
        assert np.array_equal(np.asarray(Image.open(queue / "data" / f"{q['name']}.png")), np.asarray(Image.open(images / q["item"]).convert("RGB")))
        assert np.array_equal(np.asarray(Image.open(queue / "labels" / f"{q['name']}.png")), root["labels"][index[q["item"]]])
