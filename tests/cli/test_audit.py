"""`segbatch audit` through the CLI: report files, honesty measures on data whose truth is known, bounded memory."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbatch.demo.scenes import render_video
from segbatch.demo.video import write_demo_video
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import invoke, new_video_store

FRAMES, H, W = 24, 96, 128


def _references(index: Path) -> list[str]:
    return re.findall(r"(?:src|href)='([^']+)'", index.read_text())


@pytest.fixture(scope="module")
def video_store(tmp_path_factory, ray_address):
    """The demo model (trained on the demo generator) over a demo drive, with the generator's own masks as truth."""
    from click.testing import CliRunner

    from segbatch.cli.main import cli

    folder = tmp_path_factory.mktemp("audit-video")
    video = write_demo_video(folder / "drive.mp4", FRAMES, H, W, seed=3)
    truth = np.stack([mask for _, mask in render_video(3, FRAMES, H, W, speed=0.5)]).astype(np.uint8)
    np.save(folder / "truth.npy", truth)
    store = folder / "drive.zarr"
    result = invoke(CliRunner(), cli, "run", "--input", video, "--out", store, "--samples", "4", "--address", ray_address, "--quiet")
    assert result.exit_code == 0, result.output
    return folder, store


def test_video_audit_with_truth_writes_a_complete_report(runner, cli, video_store, tmp_path):
    folder, store = video_store
    report = tmp_path / "report"
    # 24 frames are under a second of video: --min-gap 0 (the plain top-K) to rank four of them
    result = invoke(runner, cli, "audit", store, "--report", report, "--truth", folder / "truth.npy", "--top", "4", "--min-gap", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and str(report / "index.html") in result.output

    with (report / "items.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    for column in ("uncertainty_mean", "uncertainty_p95", "entropy_mean", "entropy_p95", "above_threshold", "pixels_road", "uncertainty_road", "miou"):
        assert column in rows[0]
    assert all(int(r["valid_pixels"]) == H * W for r in rows)
    assert all(sum(int(r[k]) for k in r if k.startswith("pixels_")) == H * W for r in rows)

    summary = json.loads((report / "summary.json").read_text())
    truth = summary["truth"]
    assert truth["items_with_truth"] == FRAMES and truth["items_without_truth"] == 0
    assert np.asarray(truth["confusion"]).sum() == truth["pixels"] == FRAMES * H * W
    # the paper's claim on the user's data: misclassified pixels are the uncertain ones
    assert truth["auroc"]["uncertainty"] > 0.65
    assert truth["auroc"]["entropy"] > 0.65
    assert truth["best_measure"] == max(truth["auroc"], key=lambda m: truth["auroc"][m])
    coverage = [p["accuracy"] for p in truth["accuracy_vs_coverage"]["uncertainty"]]
    assert coverage[0] > coverage[-1] + 0.1  # dropping the most uncertain pixels leaves fewer errors
    assert 0 <= truth["ece"] < 0.5 and len(truth["reliability"]) == 15
    assert len(summary["timeline"]["time"]) == FRAMES
    ranked = [r["uncertainty_mean"] for r in summary["top"]]
    assert len(ranked) == 4 and ranked == sorted(ranked, reverse=True)
    assert summary["ranking"]["spacing"] == "none" and summary["ranking"]["exact"]
    assert ranked[0] == pytest.approx(max(float(r["uncertainty_mean"]) for r in rows), rel=1e-5)

    refs = _references(report / "index.html")
    assert {"items.csv", "summary.json", "histogram.png", "classes.png", "timeline.png", "reliability.png", "coverage.png", "confusion.png"} <= set(refs)
    assert sum(r.startswith("thumbs/") and r != "thumbs/scale.png" for r in refs) == 4 * 4  # input, labels, uncertainty, errors per frame
    assert "thumbs/scale.png" in refs  # the heat map's colour scale
    for ref in refs:
        assert (report / ref).is_file(), ref
        assert not ref.startswith(("http:", "https:", "//"))


def test_items_without_truth_are_listed_not_dropped(runner, cli, video_store, tmp_path):
    from PIL import Image

    folder, store = video_store
    masks = tmp_path / "masks"
    masks.mkdir()
    truth = np.load(folder / "truth.npy")
    for frame in (0, 7, 15):  # sparse annotation, named by frame number
        Image.fromarray(truth[frame]).save(masks / f"drive_{frame:06d}.png")
    report = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--report", report, "--truth", masks, "--top", "0")
    assert result.exit_code == 0, result.output
    assert f"{FRAMES - 3} frame(s) have no truth" in result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["truth"]["items_with_truth"] == 3
    assert summary["truth"]["without_truth"] == [f"frame {i}" for i in range(FRAMES) if i not in (0, 7, 15)]
    rows = list(csv.DictReader((report / "items.csv").open()))
    assert [r["truth"] for r in rows].count("yes") == 3 and len(rows) == FRAMES


def test_report_folder_is_never_clobbered(runner, cli, video_store, tmp_path):
    _, store = video_store
    report = tmp_path / "report"
    assert invoke(runner, cli, "audit", store, "--report", report, "--top", "1", "--quiet").exit_code == 0
    again = invoke(runner, cli, "audit", store, "--report", report, "--quiet")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert invoke(runner, cli, "audit", store, "--report", report, "--top", "2", "--min-gap", "0", "--overwrite", "--quiet").exit_code == 0
    assert len(json.loads((report / "summary.json").read_text())["top"]) == 2
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = invoke(runner, cli, "audit", store, "--report", other, "--overwrite", "--quiet")
    assert refused.exit_code == 2 and "not a segbatch audit report" in refused.output
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-built report left behind


def test_wrong_truth_is_one_line_exit_2(runner, cli, video_store, tmp_path):
    folder, store = video_store
    np.save(tmp_path / "short.npy", np.zeros((3, H, W), np.uint8))
    result = invoke(runner, cli, "audit", store, "--report", tmp_path / "r", "--truth", tmp_path / "short.npy")
    assert result.exit_code == 2 and "shape" in result.output and len(result.output.strip().splitlines()) == 1
    result = invoke(runner, cli, "audit", store, "--report", tmp_path / "r", "--truth", tmp_path / "nothing")
    assert result.exit_code == 2 and "no such file" in result.output


def test_image_dataset_audit_uncertainty_finds_the_errors(runner, cli, ray_address, tmp_path):
    """The demo model on held-out scenes of the generator it was trained on: uncertainty ranks its errors (AUROC > 0.5)."""
    import shutil

    from segbatch.demo.scenes import write_dataset

    write_dataset(tmp_path / "ds", 10, 96, 128, seed=5)
    images, masks = tmp_path / "ds" / "images", tmp_path / "ds" / "masks"
    (images / "night").mkdir()
    shutil.move(images / "00009.png", images / "night" / "00009.png")  # nested: matched to masks/00009.png by its stem
    (masks / "00008.png").unlink()  # an image nobody labelled
    (images / "broken.png").write_bytes(b"not a png")
    store = tmp_path / "ds.zarr"
    assert invoke(runner, cli, "run", "--input", images, "--out", store, "--samples", "4", "--address", ray_address, "--quiet").exit_code == 0
    report = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--report", report, "--truth", masks, "--top", "3", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    truth = summary["truth"]
    assert summary["item"] == "image" and summary["items"] == 10
    assert truth["items_with_truth"] == 9 and truth["without_truth"] == ["00008.png"]
    assert truth["auroc"]["uncertainty"] > 0.6 and truth["auroc"]["entropy"] > 0.6
    assert [p["path"] for p in summary["problems"]] == ["broken.png"]  # the store's unreadable file is in the report
    rows = {r["path"]: r for r in csv.DictReader((report / "items.csv").open())}
    assert rows["night/00009.png"]["truth"] == "yes" and rows["00008.png"]["truth"] == "none"
    assert "broken.png" in (report / "index.html").read_text()
    for ref in _references(report / "index.html"):
        assert (report / ref).is_file(), ref


def test_items_csv_shows_formula_like_names_as_text(runner, cli, ray_address, tiny_model, tmp_path):
    """A file named like a formula is text in a spreadsheet (leading '), while the numbers stay numbers (OWASP CSV injection)."""
    from tests.helpers.folders import pixels, write_image

    images = tmp_path / "images"
    write_image(images / "=1+1.png", pixels(1, 40, 48))
    write_image(images / "@sum.png", pixels(2, 40, 48))
    write_image(images / "plain.png", pixels(3, 40, 48))
    store = tmp_path / "s.zarr"
    args = ("run", "--input", images, "--out", store, "--model", tiny_model, "--samples", "2", "--address", ray_address, "--quiet")
    assert invoke(runner, cli, *args).exit_code == 0
    report = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--report", report, "--top", "0", "--quiet")
    assert result.exit_code == 0, result.output
    with (report / "items.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["'=1+1.png", "'@sum.png", "plain.png"]
    assert [r["name"] for r in rows] == ["'=1+1.png", "'@sum.png", "plain.png"]
    for i, r in enumerate(rows):
        assert r["item"] == str(i) and r["height"] == "40" and r["width"] == "48" and r["valid_pixels"] == str(40 * 48)
        assert 0 <= float(r["uncertainty_mean"]) and not r["uncertainty_mean"].startswith("'")


def _certain_model(path: Path, label: int, classes: int = 4) -> Path:
    """A model whose every pixel is `label` with probability ~1, whatever the input or the dropout mask."""
    import torch

    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    model = tiny_segnet_basic(classes)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.where(torch.arange(classes) == label, 20.0, 0.0))
    save_checkpoint(model, path, ModelSpec.of(model))
    return path


def _label_raster(path: Path, like: Path, value: int) -> Path:
    with rasterio.open(like) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 255}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.full((1, src.height, src.width), value, np.uint8))
    return path


def test_calibration_certain_and_right_vs_confidently_wrong(runner, cli, ray_address, tmp_path):
    """ECE near 0 for a model that is certain and right; near 1 for one that is certain and wrong (raster, label-raster truth)."""
    raster = write_geotiff(tmp_path / "scene.tif", height=96, width=128, hole=False)
    store = tmp_path / "scene.zarr"
    model = _certain_model(tmp_path / "certain.pt", label=2)
    args = ("run", "--input", raster, "--out", store, "--model", model, "--samples", "2", "--tile", "64", "--overlap", "8", "--address", ray_address, "--quiet")
    assert invoke(runner, cli, *args).exit_code == 0

    right = invoke(runner, cli, "audit", store, "--report", tmp_path / "right", "--truth", _label_raster(tmp_path / "t2.tif", raster, 2), "--quiet")
    assert right.exit_code == 0, right.output
    s = json.loads((tmp_path / "right" / "summary.json").read_text())
    assert s["item"] == "tile" and s["items"] == len(list(csv.DictReader((tmp_path / "right" / "items.csv").open())))
    assert s["truth"]["ece"] < 0.01 and s["truth"]["accuracy"] == 1.0 and s["truth"]["auroc"]["uncertainty"] is None  # no errors to detect
    assert s["truth"]["best_measure"] is None
    # the default spacing (1 tile) leaves fewer than --top picks on a small grid: the best other tiles fill up, all shown
    rows = list(csv.DictReader((tmp_path / "right" / "items.csv").open()))
    assert len(s["top"]) == len(rows) < 20 and 1 <= s["ranking"]["filled"] < len(rows)
    # --min-gap 1 given: no two picks are neighbouring tiles (Chebyshev distance 1 in the tile grid), and none fill up
    spaced = invoke(runner, cli, "audit", store, "--report", tmp_path / "spaced", "--min-gap", "1", "--quiet")
    assert spaced.exit_code == 0, spaced.output
    s = json.loads((tmp_path / "spaced" / "summary.json").read_text())
    grid_row = {v: i for i, v in enumerate(sorted({int(r["row"]) for r in rows}))}
    grid_col = {v: i for i, v in enumerate(sorted({int(r["col"]) for r in rows}))}
    picks = [(grid_row[t["row"]], grid_col[t["col"]]) for t in s["top"]]
    assert s["ranking"]["spacing"] == "no two within 1 tile" and 1 <= len(picks) < len(rows) and s["ranking"]["filled"] == 0
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) > 1 for i, a in enumerate(picks) for b in picks[:i])

    wrong = invoke(runner, cli, "audit", store, "--report", tmp_path / "wrong", "--truth", _label_raster(tmp_path / "t1.tif", raster, 1), "--quiet")
    assert wrong.exit_code == 0, wrong.output
    s = json.loads((tmp_path / "wrong" / "summary.json").read_text())
    assert s["truth"]["ece"] > 0.95 and s["truth"]["accuracy"] == 0.0
    for ref in _references(tmp_path / "wrong" / "index.html"):
        assert (tmp_path / "wrong" / ref).is_file(), ref


def test_raster_truth_on_another_grid_is_refused(runner, cli, ray_address, tmp_path):
    from rasterio.transform import Affine

    raster = write_geotiff(tmp_path / "scene.tif", height=64, width=64, hole=False)
    store = tmp_path / "scene.zarr"
    assert (
        invoke(
            runner, cli, "run", "--input", raster, "--out", store, "--samples", "0", "--tile", "64", "--overlap", "8", "--address", ray_address, "--quiet"
        ).exit_code
        == 0
    )
    shifted = write_geotiff(tmp_path / "shifted.tif", height=64, width=64, bands=1, hole=False, transform=Affine(30.0, 0, 500300.0, 0, -30.0, 2700000.0))
    result = invoke(runner, cli, "audit", store, "--report", tmp_path / "r", "--truth", shifted)
    assert result.exit_code == 2 and "another grid" in result.output
    # a store run with --samples 0 has no uncertainty array: the audit ranks by entropy
    assert invoke(runner, cli, "audit", store, "--report", tmp_path / "r2", "--quiet").exit_code == 0
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["measure"] == "entropy"


def _synthetic_video_store(path: Path, frames: int) -> Path:
    """A complete video-kind store written directly (no model), with smooth, compressible values."""
    from segbatch.store import update_attrs

    root = new_video_store(path, frames, H, W)
    yy, xx = np.mgrid[:H, :W]
    for lo in range(0, frames, 8):
        k = np.arange(lo, min(lo + 8, frames))[:, None, None]
        root["labels"][lo : lo + 8] = ((xx // 16 + yy // 16 + k) % 11).astype(np.uint8)
        unc = ((xx + yy + k) % 97 / 97 * 0.05).astype(np.float16)
        root["uncertainty"][lo : lo + 8] = unc
        root["entropy"][lo : lo + 8] = unc * 20
        root["confidence"][lo : lo + 8] = 1 - unc * 5
    update_attrs(root, status="complete")
    return path


_MEASURE = """
import resource, sys
from segbatch.cli.main import cli
cli(sys.argv[1:], standalone_mode=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow  # a 2,000-frame store, audited by two processes of their own
def test_audit_memory_does_not_grow_with_the_store(tmp_path):
    small = _synthetic_video_store(tmp_path / "small.zarr", 80)
    large = _synthetic_video_store(tmp_path / "large.zarr", 2000)  # 24.6 M pixels, 172 MB of arrays uncompressed

    def peak_mib(store: Path) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, "audit", str(store), "--report", str(store.with_suffix(".report")), "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[-1])

    small_mib, large_mib = peak_mib(small), peak_mib(large)
    assert large_mib < small_mib + 60, (small_mib, large_mib)  # loading the large store's arrays would add > 172 MiB
    summary = json.loads((tmp_path / "large.report" / "summary.json").read_text())
    assert summary["items"] == 2000 and summary["pixels"] == 2000 * H * W


FPS = 25.0


def _ranked_video_store(path: Path, frames: int = 60, mutual_information: bool = False) -> tuple[Path, Path]:
    """A complete video-kind store written directly (no model, no Ray) whose measures rank frames differently, and its truth.

    uncertainty: a run of consecutive frames 20..29 peaks at frame 24 (0.2, less 0.001 per frame away), a lower
    bump at frame 50 (0.1), 0.01 elsewhere; the same for every pixel of a frame, so it says nothing about which
    pixels are wrong. entropy: 1.5 on the left quarter of every frame, where the truth disagrees with the labels,
    and a frame-dependent 0.2..0.3 elsewhere: it finds every error (AUROC 1) and ranks frames in another order.
    mutual_information (when asked for): half the entropy.
    """
    from segbatch.store import update_attrs

    outputs = ("labels", "entropy", "confidence", "uncertainty", *(("mutual_information",) if mutual_information else ()))
    root = new_video_store(path, frames, H, W, outputs, float_dtype="float32", fps=FPS)
    f = np.arange(frames)
    unc = np.where(abs(f - 24) <= 5, 0.2 - 0.001 * abs(f - 24), 0.01)
    unc[50] = 0.1
    yy, xx = np.mgrid[:H, :W]
    labels = ((xx // 16 + yy // 16 + f[:, None, None]) % 11).astype(np.uint8)
    left = np.broadcast_to(xx < W // 4, labels.shape)
    entropy = np.where(left, 1.5, 0.2 + 0.1 * ((7 * f) % frames / frames)[:, None, None])
    root["labels"][...] = labels
    root["uncertainty"][...] = np.broadcast_to(unc[:, None, None], labels.shape).astype(np.float32)
    root["entropy"][...] = entropy.astype(np.float32)
    root["confidence"][...] = np.float32(0.8)
    if mutual_information:
        root["mutual_information"][...] = (entropy / 2).astype(np.float32)
    update_attrs(root, status="complete")
    truth = path.with_suffix(".truth.npy")
    np.save(truth, np.where(left, (labels + 1) % 11, labels).astype(np.uint8))
    return path, truth


def _audit(runner, cli, store: Path, report: Path, *args) -> dict:
    result = invoke(runner, cli, "audit", store, "--report", report, "--quiet", *args)
    assert result.exit_code == 0, result.output
    return json.loads((report / "summary.json").read_text())


def test_ranking_spaces_its_picks_by_min_gap(runner, cli, tmp_path):
    """A run of near-duplicate uncertain frames gives one pick, the best first; --min-gap 0 is the plain top-K."""
    store, _ = _ranked_video_store(tmp_path / "v.zarr")

    spaced = _audit(runner, cli, store, tmp_path / "spaced", "--top", "5", "--min-gap", "1")  # about a second (25 frames) apart
    assert [t["frame"] for t in spaced["top"]] == [24, 50]  # the peak of the run, then the other bump; nothing else is 1 s from both
    assert spaced["ranking"] == {
        "measure": "uncertainty",
        "min_gap": 1.0,
        "unit": "s",
        "spacing": "at least 1 s apart",
        "picked": 2,
        "filled": 0,  # a gap the user gave is kept, even when it leaves fewer picks than --top
        "candidates": 60,
        "exact": True,
    }
    assert "at least 1 s apart" in (tmp_path / "spaced" / "index.html").read_text()

    # the default on a 2.4 s clip: 1 s would leave 2 picks of 5, so the gap is the clip's length over 4, and the best fill up
    default = _audit(runner, cli, store, tmp_path / "default", "--top", "5")
    assert len(default["top"]) == 5 and default["top"][0]["frame"] == 24
    assert default["ranking"]["min_gap"] == pytest.approx(59 / 25 / 4, rel=1e-6)

    wider = _audit(runner, cli, store, tmp_path / "wider", "--top", "5", "--min-gap", "0.2")  # 5 frames
    times = [t["time"] for t in wider["top"]]
    assert wider["top"][0]["frame"] == 24 and len(times) == 5
    assert all(abs(a - b) >= 0.2 - 1e-6 for i, a in enumerate(times) for b in times[:i])
    means = [t["uncertainty_mean"] for t in wider["top"]]
    assert means == sorted(means, reverse=True)

    plain = _audit(runner, cli, store, tmp_path / "plain", "--top", "5", "--min-gap", "0")
    with (tmp_path / "plain" / "items.csv").open() as f:
        rows = list(csv.DictReader(f))
    old = sorted(rows, key=lambda r: (-float(r["uncertainty_mean"]), int(r["item"])))[:5]  # the ranking before spacing: top K by score
    assert [t["frame"] for t in plain["top"]] == [int(r["frame"]) for r in old] == [24, 23, 25, 22, 26]
    assert plain["ranking"]["spacing"] == "none"


def test_rank_by_entropy_ranks_by_it_and_the_report_names_the_best_measure(runner, cli, tmp_path):
    store, truth = _ranked_video_store(tmp_path / "v.zarr", mutual_information=True)
    report = tmp_path / "r"
    result = invoke(runner, cli, "audit", store, "--report", report, "--truth", truth, "--rank-by", "entropy", "--min-gap", "0", "--top", "6")
    assert result.exit_code == 0, result.output
    s = json.loads((report / "summary.json").read_text())
    assert s["measure"] == s["ranking"]["measure"] == "entropy"
    rows = list(csv.DictReader((report / "items.csv").open()))
    by_entropy = sorted(rows, key=lambda r: (-float(r["entropy_mean"]), int(r["item"])))[:6]
    assert [t["frame"] for t in s["top"]] == [int(r["frame"]) for r in by_entropy]
    assert s["top"][0]["frame"] == 17 != 24  # entropy's best frame, not uncertainty's
    entropies = [t["entropy_mean"] for t in s["top"]]
    assert entropies == sorted(entropies, reverse=True)
    assert "mutual_information_mean" in rows[0]

    t = s["truth"]
    assert t["auroc"]["entropy"] == pytest.approx(1.0) and t["auroc"]["uncertainty"] == pytest.approx(0.5, abs=0.01)
    assert t["best_measure"] == "entropy"  # mutual information (half the entropy) ties with it: the first of equals
    assert set(t["accuracy_vs_coverage"]) == {"uncertainty", "entropy", "mutual_information"}
    for curve in t["accuracy_vs_coverage"].values():
        assert len(curve) == 20 and all(0 <= p["coverage"] <= 1 for p in curve)
    assert t["accuracy_vs_coverage"]["entropy"][14]["accuracy"] == pytest.approx(1.0)  # the errors (a quarter) dropped first
    assert (report / "coverage.png").is_file() and "coverage.png" in _references(report / "index.html")
    page = (report / "index.html").read_text()
    assert "finds errors best" in page and "<b>entropy</b>" in page and "the ranking uses it" in page

    # ranked by uncertainty, the report and the command's line point to the better measure
    other = tmp_path / "u"
    result = invoke(runner, cli, "audit", store, "--report", other, "--truth", truth, "--top", "1")
    assert result.exit_code == 0, result.output
    assert "entropy finds errors better" in result.output and "--rank-by entropy" in result.output
    assert "<code>--rank-by entropy</code>" in (other / "index.html").read_text()

    mi = _audit(runner, cli, store, tmp_path / "mi", "--rank-by", "mutual_information", "--min-gap", "0", "--top", "3")
    assert mi["measure"] == "mutual_information" and [t["frame"] for t in mi["top"]] == [t["frame"] for t in s["top"][:3]]


def test_rank_by_a_measure_the_store_lacks_is_one_line_exit_2(runner, cli, tmp_path):
    store, _ = _ranked_video_store(tmp_path / "v.zarr")
    report = tmp_path / "r"
    result = invoke(runner, cli, "audit", store, "--report", report, "--rank-by", "mutual_information")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "no mutual_information array" in result.output and "--outputs mutual_information" in result.output
    assert not report.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    result = invoke(runner, cli, "audit", store, "--report", report, "--rank-by", "variance")
    assert result.exit_code == 2 and "variance" in result.output
