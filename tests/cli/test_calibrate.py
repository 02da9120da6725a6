"""`segbatch calibrate` through the CLI: a checkpoint with its temperature recorded, runs that apply it (labels of one pass
unchanged, confidence changed), and stores and audits that say the model was calibrated and on what."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from segbatch.demo.model import demo_checkpoint_path
from tests.helpers.stores import invoke, run


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from segbatch.demo.scenes import write_dataset

    folder = tmp_path_factory.mktemp("calibration")
    write_dataset(folder, 12, 96, 128, seed=5)
    return folder / "images", folder / "masks"


def test_calibrate_records_a_temperature_that_runs_apply_and_audits_report(ray_address, runner, cli, labelled, tmp_path):
    images, masks = labelled
    out = tmp_path / "calibrated.pt"
    r = invoke(runner, cli, "calibrate", "--model", demo_checkpoint_path(), "--images", images, "--masks", masks, "--out", out, "--samples", 2, "--quiet")
    assert r.exit_code == 0, r.output
    assert "temperature" in r.output and "ECE" in r.output and "held-out" in r.output
    info = json.loads(invoke(runner, cli, "info", out, "--json").stdout)
    found = info["provenance"]["calibration"]
    t = found["temperature"]
    assert t > 0 and t != 1.0 and found["samples"] == 2 and found["fit_images"] + found["held_out_images"] == 12
    assert {"nll_before", "nll_after", "ece_before", "ece_after"} <= set(found)

    stores = {}
    for name, model in (("plain", demo_checkpoint_path()), ("calibrated", out)):
        stores[name] = tmp_path / f"{name}.zarr"
        args = ("--input", images, "--out", stores[name], "--model", model, "--samples", 0, "--address", ray_address)
        assert run(runner, cli, *args).exit_code == 0
    plain, calibrated = (zarr.open_group(str(stores[n]), mode="r") for n in ("plain", "calibrated"))
    assert np.array_equal(plain["labels"][...], calibrated["labels"][...])  # one softmax: labels do not move for T > 0
    assert not np.array_equal(plain["confidence"][...], calibrated["confidence"][...])
    assert calibrated.attrs["segbatch"]["model"]["temperature"] == pytest.approx(t)
    assert "temperature" not in plain.attrs["segbatch"]["model"]  # an uncalibrated model's store is as before

    r = invoke(runner, cli, "audit", stores["calibrated"], "--report", tmp_path / "report", "--truth", masks, "--quiet")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["model"]["calibration"]["temperature"] == pytest.approx(t)
    assert f"temperature {t:.3f}, fitted by segbatch calibrate on" in (tmp_path / "report" / "index.html").read_text()


def test_calibrate_refuses_to_write_over_its_own_checkpoint(runner, cli, labelled, tmp_path):
    images, masks = labelled
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(demo_checkpoint_path().read_bytes())
    r = invoke(runner, cli, "calibrate", "--model", ckpt, "--images", images, "--masks", masks, "--out", ckpt, "--overwrite")
    assert r.exit_code == 2 and "is the checkpoint being calibrated" in r.output
