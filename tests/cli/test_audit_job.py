"""`segbatch audit` of a job store of many inputs: every complete group pooled, a per-input table, truth per input.

One job is made for the module: two demo drives (seeds 1 and 2), an
index-encoded video whose flat colours the model sees differently, and a
file that is no video (a failed input). Every figure the report gives is
checked against the groups' own arrays read back with zarr.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from segbatch.audit.metrics import mean_iou
from segbatch.demo.video import write_demo_video
from segbatch.store import NODATA_LABEL
from tests.helpers.stores import invoke
from tests.helpers.videos import write_video

FRAMES, H, W = 8, 48, 64
GOOD = ("a", "b", "c")
K = 11


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_address, tiny_model):
    """The job store and its inputs' folder: a, b, c complete; d failed (not a video)."""
    from segbatch.cli.main import cli

    folder = tmp_path_factory.mktemp("audit-job")
    videos = folder / "videos"
    videos.mkdir()
    write_demo_video(videos / "a.mp4", FRAMES, H, W, seed=1)
    write_demo_video(videos / "b.mp4", FRAMES, H, W, seed=2)
    write_video(videos / "c.mp4", FRAMES, H, W)
    (videos / "d.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    store = folder / "job.zarr"
    invoke(CliRunner(), cli, "run", "--input", videos, "--out", store, "--model", tiny_model, "--samples", "2", "--address", ray_address, "--quiet")
    inputs = {i["name"]: i["status"] for i in zarr.open_group(str(store), mode="r").attrs["segbatch"]["inputs"]}
    assert inputs == {"a": "complete", "b": "complete", "c": "complete", "d": "failed"}
    return folder, store


@pytest.fixture(scope="module")
def groups(job):
    """Each complete input's arrays, as the group holds them."""
    _, store = job
    root = zarr.open_group(str(store), mode="r")
    return {name: {a: root[name][a][...] for a in ("labels", "uncertainty", "confidence")} for name in GOOD}


@pytest.fixture(scope="module")
def report(job):
    """The job audited without truth: the plain top 6 (no spacing), so the ranking is checkable frame by frame."""
    from segbatch.cli.main import cli

    folder, store = job
    out = folder / "report"
    result = invoke(CliRunner(), cli, "audit", store, "--report", out, "--top", "6", "--min-gap", "0", "--quiet")
    assert result.exit_code == 0, result.output
    return out, result.output


def _rows(report: Path) -> list[dict[str, str]]:
    with (report / "items.csv").open() as f:
        return list(csv.DictReader(f))


def _frame_means(groups) -> dict[tuple[str, int], float]:
    """(input, frame) -> mean uncertainty over the frame's valid pixels, computed here from the arrays."""
    out = {}
    for name, g in groups.items():
        for f in range(FRAMES):
            valid = g["labels"][f] != NODATA_LABEL
            out[(name, f)] = float(g["uncertainty"][f][valid].astype(np.float64).mean())
    return out


def test_items_csv_names_every_input_and_pools_the_pixels(report, groups):
    out, _ = report
    rows = _rows(out)
    assert list(rows[0])[:3] == ["input", "item", "name"]
    assert [(r["input"], int(r["frame"])) for r in rows] == [(n, f) for n in GOOD for f in range(FRAMES)]
    means = _frame_means(groups)
    for r in rows:
        assert float(r["uncertainty_mean"]) == pytest.approx(means[(r["input"], int(r["frame"]))], rel=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    labels = np.concatenate([g["labels"].ravel() for g in groups.values()])
    uncertainty = np.concatenate([g["uncertainty"].ravel() for g in groups.values()]).astype(np.float64)
    assert summary["items"] == len(GOOD) * FRAMES and summary["pixels"] == labels.size
    assert summary["uncertainty"]["mean"] == pytest.approx(uncertainty.mean(), rel=1e-9)
    assert [c["pixels"] for c in summary["classes"]] == np.bincount(labels, minlength=K)[:K].tolist()
    above = (uncertainty > summary["threshold"]).mean()
    assert summary["above_threshold"] == pytest.approx(above, rel=1e-9)


def test_ranking_spans_the_inputs_and_thumbnails_come_from_each_ones_source(report, groups, job):
    from PIL import Image

    from segbatch.sources.video import probe_video, read_frames

    out, _ = report
    folder, _ = job
    summary = json.loads((out / "summary.json").read_text())
    means = _frame_means(groups)
    best = sorted(means.values(), reverse=True)[:6]
    top = summary["top"]
    assert [r["uncertainty_mean"] for r in top] == pytest.approx(best, rel=1e-5)
    for r in top:
        assert means[(r["input"], r["frame"])] == pytest.approx(r["uncertainty_mean"], rel=1e-5)
    assert summary["input_thumbnails"] == "ok"
    for rank, r in enumerate(top, start=1):
        plan = probe_video(folder / "videos" / f"{r['input']}.mp4")
        frame = next(rgb for i, rgb in read_frames(plan, r["frame"], r["frame"] + 1))
        thumb = np.asarray(Image.open(out / "thumbs" / f"{rank:03d}-input.png"))
        np.testing.assert_array_equal(thumb, frame)  # the ranked frame of its own input, not of another
    page = (out / "index.html").read_text()
    assert all(f"<td>{r['input']}</td><td>{r['name']}</td>" in page for r in top)


def test_the_inputs_table_is_least_sure_first_with_each_inputs_figures(report, groups):
    out, _ = report
    summary = json.loads((out / "summary.json").read_text())
    expected = {}
    for name, g in groups.items():
        valid = g["labels"] != NODATA_LABEL
        u = g["uncertainty"][valid].astype(np.float64)
        expected[name] = (u.mean(), (u > summary["threshold"]).mean())
    table = summary["inputs"]
    assert [r["input"] for r in table] == sorted(GOOD, key=lambda n: -expected[n][0])
    means = _frame_means(groups)
    for r in table:
        assert r["items"] == FRAMES and r["problems"] == 0
        assert r["uncertainty_mean"] == pytest.approx(expected[r["input"]][0], rel=1e-9)
        assert r["above_threshold"] == pytest.approx(expected[r["input"]][1], rel=1e-9)
        assert r["least_sure_uncertainty_mean"] == pytest.approx(max(v for (n, _), v in means.items() if n == r["input"]), rel=1e-5)
    page = (out / "index.html").read_text()
    section = page[page.index("<h2>Inputs") :]
    assert [m for m in re.findall(r"<tr><td>([a-d])</td>", section.split("</table>")[0])] == [r["input"] for r in table]


def test_a_failed_input_is_skipped_and_named(report):
    out, output = report
    summary = json.loads((out / "summary.json").read_text())
    assert [s["input"] for s in summary["job"]["skipped"]] == ["d"] and summary["job"]["audited"] == 3
    assert "d" not in {r["input"] for r in _rows(out)}
    warnings = [line for line in output.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "1 input(s)" in warnings[0] and "d (failed" in warnings[0]
    assert "skipped, without complete results: d (failed)" in (out / "index.html").read_text()


def _truth_for(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labels with about a third of the pixels moved to another class, and a few unlabelled (255)."""
    rng = np.random.default_rng(seed)
    truth = labels.astype(np.int64).copy()
    flip = rng.random(truth.shape) < 0.3
    truth[flip] = (truth[flip] + 1 + rng.integers(0, K - 1, int(flip.sum()))) % K
    truth[rng.random(truth.shape) < 0.05] = 255
    return truth.astype(np.uint8)


def _expected(labels: np.ndarray, truth: np.ndarray, confidence: np.ndarray) -> tuple[float, float, float]:
    """Accuracy, mIoU and 15-bin ECE of one input, computed here."""
    ok = (labels != NODATA_LABEL) & (truth < K)
    pred, gt = labels[ok].astype(np.int64), truth[ok].astype(np.int64)
    right = pred == gt
    conf = np.bincount(gt * K + pred, minlength=K * K).reshape(K, K)
    c = confidence[ok].astype(np.float64)
    bins = np.clip((c * 15).astype(np.int64), 0, 14)
    ece = sum(abs(right[bins == b].mean() - c[bins == b].mean()) * (bins == b).sum() for b in range(15) if (bins == b).any()) / c.size
    return float(right.mean()), mean_iou(conf), float(ece)


@pytest.fixture(scope="module")
def truths(job, groups):
    """Per input: a folder of per-frame masks for a, an array for c, nothing for b."""
    from PIL import Image

    folder, _ = job
    out = folder / "truth"
    (out / "a").mkdir(parents=True)
    made = {"a": _truth_for(groups["a"]["labels"], 1), "c": _truth_for(groups["c"]["labels"], 2)}
    for f in range(FRAMES):
        Image.fromarray(made["a"][f]).save(out / "a" / f"{f:06d}.png")
    np.save(out / "c.npy", made["c"])
    return out, made


def test_truth_per_input_folder_gives_each_inputs_accuracy(job, groups, truths, tmp_path, runner, cli):
    _, store = job
    folder, made = truths
    out = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--report", out, "--truth", folder, "--top", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert "1 of 3 inputs have no truth" in result.output
    summary = json.loads((out / "summary.json").read_text())
    table = {r["input"]: r for r in summary["inputs"]}
    assert table["b"]["truth"] is None and table["b"]["accuracy"] is None
    for name, truth in made.items():
        g = groups[name]
        accuracy, miou, ece = _expected(g["labels"], truth, g["confidence"])
        assert 0.5 < accuracy < 0.9
        assert table[name]["accuracy"] == pytest.approx(accuracy, rel=1e-9)
        assert table[name]["miou"] == pytest.approx(miou, rel=1e-9)
        assert table[name]["ece"] == pytest.approx(ece, rel=1e-6)
    labelled = sum(int(((groups[n]["labels"] != NODATA_LABEL) & (t < K)).sum()) for n, t in made.items())
    assert summary["truth"]["pixels"] == labelled and summary["truth"]["items_with_truth"] == 2 * FRAMES
    assert summary["job"]["without_truth"] == ["b"]
    rows = _rows(out)
    assert {r["truth"] for r in rows if r["input"] == "b"} == {"none"} and {r["truth"] for r in rows if r["input"] != "b"} == {"yes"}
    assert "no truth" in (out / "index.html").read_text()


def test_truth_manifest_maps_inputs_and_refuses_unknown_names(job, groups, truths, tmp_path, runner, cli):
    _, store = job
    folder, made = truths
    manifest = tmp_path / "truth.txt"
    manifest.write_text(f"# input  truth\nc\t{folder / 'c.npy'}\n")
    out = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--report", out, "--truth", manifest, "--top", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 of 3 inputs have no truth" in result.output
    table = {r["input"]: r for r in json.loads((out / "summary.json").read_text())["inputs"]}
    assert table["c"]["accuracy"] == pytest.approx(_expected(groups["c"]["labels"], made["c"], groups["c"]["confidence"])[0], rel=1e-9)
    assert table["a"]["truth"] is None

    manifest.write_text("cc c.npy\n")
    refused = invoke(runner, cli, "audit", store, "--report", tmp_path / "r2", "--truth", manifest, "--quiet")
    assert refused.exit_code == 2 and "no input named 'cc'" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "r2").exists()


def test_group_audits_one_input_as_a_store(job, groups, tmp_path, runner, cli):
    _, store = job
    out = tmp_path / "report"
    result = invoke(runner, cli, "audit", store, "--group", "c", "--report", out, "--top", "1", "--min-gap", "0", "--quiet")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert list(rows[0])[:2] == ["item", "name"] and "input" not in rows[0]
    means = _frame_means({"c": groups["c"]})
    assert [float(r["uncertainty_mean"]) for r in rows] == pytest.approx([means[("c", f)] for f in range(FRAMES)], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert "inputs" not in summary and "job" not in summary and summary["store"].endswith("/c")
    assert summary["top"][0]["uncertainty_mean"] == pytest.approx(max(means.values()), rel=1e-5)

    failed = invoke(runner, cli, "audit", store, "--group", "d", "--report", tmp_path / "r2", "--quiet")
    assert failed.exit_code == 2 and "has no results" in failed.output


def test_picks_are_spaced_within_an_input_never_across_inputs(job, groups, tmp_path, runner, cli):
    """Each input is 8 frames (under a second): with a 1 s gap each may give one pick, and each does."""
    _, store = job
    out = tmp_path / "report"
    assert invoke(runner, cli, "audit", store, "--report", out, "--top", "5", "--min-gap", "1", "--quiet").exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    means = _frame_means(groups)
    best = {name: max(v for (n, _), v in means.items() if n == name) for name in GOOD}
    assert sorted(r["input"] for r in summary["top"]) == sorted(GOOD)
    for r in summary["top"]:
        assert r["uncertainty_mean"] == pytest.approx(best[r["input"]], rel=1e-5)
    assert summary["ranking"]["exact"] and "within an input" in summary["ranking"]["spacing"]


def test_label_errors_of_a_job_pool_the_class_thresholds_of_every_input_with_truth(job, groups, truths, tmp_path, runner, cli):
    _, store = job
    folder, made = truths
    out = tmp_path / "report"
    assert invoke(runner, cli, "audit", store, "--report", out, "--truth", folder, "--top", "3", "--quiet").exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    errors = summary["truth"]["label_errors"]
    # computed here: thresholds from a and c together (b has no truth), then each input's suspect pixels
    pooled = {name: (groups[name]["labels"], truth, groups[name]["confidence"], groups[name]["uncertainty"]) for name, truth in made.items()}
    sums, counts = np.zeros(K), np.zeros(K)
    for labels, truth, conf, _ in pooled.values():
        ok = (labels != NODATA_LABEL) & (truth < K) & (labels == truth)
        sums += np.bincount(labels[ok], weights=conf[ok].astype(np.float64), minlength=K)
        counts += np.bincount(labels[ok], minlength=K)
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    assert [errors["class_thresholds"][n] for n in summary["model"]["classes"]] == pytest.approx([t if np.isfinite(t) else None for t in thresholds])
    suspect = 0
    for labels, truth, conf, unc in pooled.values():
        ok = (labels != NODATA_LABEL) & (truth < K)
        pred = labels[ok].astype(np.int64)
        suspect += int(((pred != truth[ok]) & (conf[ok] >= thresholds[pred]) & (unc[ok] < summary["threshold"])).sum())
    assert suspect > 0 and errors["suspect_pixels"] == suspect
    assert errors["scores"] == "confidence" and 0 < len(errors["ranked"]) <= 3
    assert {e["input"] for e in errors["ranked"]} <= {"a", "c"}  # b has no truth: nothing of it can be suspect
    for e in errors["ranked"]:
        assert set(e["pictures"]) == {"truth", "prediction", "suspect"} | ({"input"} if "input" in e["pictures"] else set())
        assert all((out / p).is_file() for p in e["pictures"].values())
    rows = [r for r in _rows(out) if r["input"] == "b"]
    assert {r["label_issue_score"] for r in rows} == {""}  # no truth: no score (an empty cell), not zero
    assert "Likely label errors" in (out / "index.html").read_text()
