"""`segbatch run` on video, through the CLI as a user runs it, on the session's shared Ray runtime."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from tests.helpers.drivers import finished_units, signal_mid_run, start_driver, total_units
from tests.helpers.stores import arrays, assert_same, run
from tests.helpers.videos import corrupt, frame_index, write_understated_reorder, write_video

SAMPLES_DIR = Path(__file__).parents[3] / "shared" / "samples"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "drive.mp4", 40, gop=12)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "long.mp4", 240, gop=24)


@pytest.fixture(scope="module")
def clean_long(ray_address, runner_module, cli_module, long_video, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    r = run(runner_module, cli_module, "--input", long_video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 2)
    assert r.exit_code == 0, r.output
    return arrays(out)


def test_every_frame_is_segmented_in_place(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "labels.zarr"
    r = run(runner, cli, "--input", video, "--out", out, "--model", tiny_model, "--samples", 3, "--seed", 7, "--actors", 2, "--batch-size", 3)
    assert r.exit_code == 0, r.output
    assert "segmented 40 frames" in r.output
    ds = xr.open_zarr(out)
    assert ds.labels.dims == ("frame", "y", "x") and ds.labels.shape == (40, 48, 64)
    assert ds.uncertainty.dtype == np.float16 and ds.entropy.dtype == np.float16
    assert np.allclose(ds.time.values, np.arange(40) / 25)
    attrs = ds.attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["samples"] == 3 and attrs["seed"] == 7
    assert attrs["source"]["kind"] == "video" and attrs["model"]["arch"] == "segnet-basic" and len(attrs["model"]["sha256"]) == 64

    # each stored frame is the model's answer on that very frame (none lost, duplicated or shifted), in the batch the
    # worker gave it: --batch-size consecutive frames from the start of its unit, each with its own seed
    from segbatch.mc import derive_seed, mc_predict
    from segbatch.model import load_checkpoint
    from segbatch.sources.video import probe_video, read_frames

    model = load_checkpoint(tiny_model).model
    plan = probe_video(video)
    frames = dict(read_frames(plan, 0, 40))
    assert [frame_index(rgb) for rgb in frames.values()] == list(frames) == list(range(40))
    unit = attrs["unit_frames"]
    for i in range(0, 40, 9):
        lo = i // unit * unit + (i % unit) // 3 * 3
        batch = range(lo, min(lo + 3, i // unit * unit + unit, 40))
        x = torch.from_numpy(np.stack([frames[j] for j in batch])).permute(0, 3, 1, 2).float() / 255
        ref = mc_predict(model, x, samples=3, seed=[derive_seed(7, j) for j in batch])
        np.testing.assert_array_equal(ds.labels.values[i], ref["labels"][i - lo].numpy())
        np.testing.assert_array_equal(ds.uncertainty.values[i], ref["uncertainty"][i - lo].numpy().astype(np.float16))


def test_frames_range_resize_and_extra_outputs(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "part.zarr"
    r = run(
        runner,
        cli,
        "--input",
        video,
        "--out",
        out,
        "--model",
        tiny_model,
        "--samples",
        2,
        "--frames",
        "10:30",
        "--resize",
        "32x40",
        "--outputs",
        "mutual_information,probs",
        "--float32",
    )
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(out)
    assert ds.labels.shape == (20, 48, 64) and ds.probs.shape == (20, 48, 64, 11) and ds.probs.dims[-1] == "class"
    assert ds.uncertainty.dtype == np.float32 and "mutual_information" in ds
    assert np.allclose(ds.time.values, np.arange(10, 30) / 25)
    # labels are the argmax of the resampled probabilities
    np.testing.assert_array_equal(ds.labels.values, ds.probs.values.argmax(-1))


def test_zero_samples_writes_labels_and_entropy_only(ray_address, runner, cli, video, tiny_model, tmp_path):
    r = run(runner, cli, "--input", video, "--out", tmp_path / "det.zarr", "--model", tiny_model, "--samples", 0, "--frames", ":16")
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "det.zarr")
    assert "uncertainty" not in ds and ds.entropy.shape == (16, 48, 64)


def test_precision_is_recorded_and_resume_keeps_it(ray_address, runner, cli, video, tiny_model, tmp_path):
    half, full = tmp_path / "bf16.zarr", tmp_path / "fp32.zarr"
    assert run(runner, cli, "--input", video, "--out", half, "--model", tiny_model, "--samples", 2, "--precision", "bf16").exit_code == 0
    assert run(runner, cli, "--input", video, "--out", full, "--model", tiny_model, "--samples", 2).exit_code == 0
    agree = (arrays(half)["labels"] == arrays(full)["labels"]).mean()
    assert 0.9 < agree < 1.0  # bf16 moves some near-tied pixels, not the picture
    assert zarr.open_group(str(half)).attrs["segbatch"]["config"]["precision"] == "bf16"
    r = run(runner, cli, "--input", video, "--out", half, "--model", tiny_model, "--samples", 2, "--resume")
    assert r.exit_code == 2 and "precision: store has 'bf16', now 'fp32'" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may decode with NVDEC")
def test_hwaccel_without_a_device_is_one_line_exit_2(ray_address, runner, cli, video, tiny_model, tmp_path):
    r = run(runner, cli, "--input", video, "--out", tmp_path / "hw.zarr", "--model", tiny_model, "--samples", 1, "--hwaccel", "cuda")
    assert r.exit_code == 2 and "--hwaccel cuda" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_killed_actor_is_replaced_and_the_result_unchanged(ray_address, runner, cli, long_video, tiny_model, tmp_path, clean_long):
    import ray

    out = tmp_path / "killed.zarr"
    killed = []

    def kill_one_worker():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("segbatch-worker")] if out.exists() else []
            done = finished_units(out)
            if names and done >= 1:
                ray.kill(ray.get_actor(names[0], namespace=_namespace(names[0])), no_restart=False)
                killed.append((names[0], done))
            time.sleep(0.05)

    t = threading.Thread(target=kill_one_worker)
    t.start()
    r = run(runner, cli, "--input", long_video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 2)
    t.join()
    assert r.exit_code == 0, r.output
    assert killed and killed[0][1] < total_units(out), "the kill did not land mid-run"
    assert_same(arrays(out), clean_long)


def test_ctrl_c_exits_130_and_resume_finishes(ray_address, runner, cli, long_video, tiny_model, tmp_path, clean_long):
    out = tmp_path / "interrupted.zarr"
    proc = start_driver(ray_address, "--input", long_video, "--out", out, "--model", tiny_model, "--samples", 2, "--actors", 1)
    signal_mid_run(out, proc, signal.SIGINT)  # once a unit is in the ledger, the driver held: a fast run cannot finish first
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted with" in err.strip().splitlines()[-1] and "--resume" in err
    assert zarr.open_group(str(out)).attrs["segbatch"]["status"] == "running"
    r = run(runner, cli, "--input", long_video, "--out", out, "--model", tiny_model, "--samples", 2, "--resume")
    assert r.exit_code == 0, r.output
    assert_same(arrays(out), clean_long)


def test_corrupt_packets_are_recorded_in_the_store(ray_address, runner, cli, tiny_model, tmp_path):
    path = corrupt(write_video(tmp_path / "bad.mkv", 60, gop=30), 0.45, 400)
    out = tmp_path / "bad.zarr"
    r = run(runner, cli, "--input", path, "--out", out, "--model", tiny_model, "--samples", 1)
    assert r.exit_code == 0, r.output
    assert "warning: frames" in r.output
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    assert attrs["problems"], "corrupt frames were not recorded"
    assert all(p["kind"] == "frames" for p in attrs["problems"])
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["problems"] == attrs["problems"]
    labels = zarr.open_group(str(out))["labels"][...]
    for p in attrs["problems"]:  # problem ranges are source frame indices (= store rows without --frames)
        for a, b in p["missing"]:
            assert (labels[a:b] == 255).all()
    text = runner.invoke(cli, ["info", str(out)]).output
    assert "problems     " in text and "frames" in text.split("problems")[1]
    # the overlay still exports, with the damaged frames in it
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "bad.mp4"), "--quiet"])
    assert r.exit_code == 0, r.output


def _model_answers(model_path, path, seed, samples):
    """{frame index: labels} of the model on every frame PyAV decodes from `path`, keyed by the index its pixels encode."""
    import av

    from segbatch.mc import derive_seed, mc_predict
    from segbatch.model import load_checkpoint

    model = load_checkpoint(model_path).model
    answers = {}
    with av.open(str(path)) as c:
        frames = []
        for packet in c.demux(video=0):
            try:
                frames += packet.decode()
            except av.FFmpegError:  # a packet cut short
                pass
        for frame in frames:
            rgb = frame.to_ndarray(format="rgb24")
            i = frame_index(rgb)
            ref = mc_predict(model, torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, samples=samples, seed=derive_seed(seed, i))
            answers[i] = ref["labels"][0].numpy()
    return answers


def _same_frame(stored, answer):
    """Whether a stored row is the model's answer on that frame (another frame's agrees on about 2/3 of the pixels)."""
    return (stored == answer).mean() > 0.99


def test_frames_the_decoder_emits_out_of_order_land_in_place(ray_address, runner, cli, tiny_model, tmp_path):
    # this stream understates its reorder depth: the decoder hands frames out in decode order (0, 3, 1, 2, 6, 4, 5 ...)
    path = write_understated_reorder(tmp_path / "camera.mp4", 40, gop=12)
    out = tmp_path / "ooo.zarr"
    r = run(runner, cli, "--input", path, "--out", out, "--model", tiny_model, "--samples", 2, "--seed", 5, "--actors", 2, "--batch-size", 3)
    assert r.exit_code == 0, r.output
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["problems"] == [], attrs["problems"]
    assert "warning" not in r.output
    stored = arrays(out)
    answers = _model_answers(tiny_model, path, seed=5, samples=2)
    assert sorted(answers) == list(range(40))
    for i in range(40):  # each row holds the model's answer on that very frame: none lost, duplicated or shifted
        assert _same_frame(stored["labels"][i], answers[i]), f"frame {i}"


def test_truncated_faststart_mp4_accounts_for_every_declared_frame(ray_address, runner, cli, tiny_model, tmp_path):
    path = write_video(tmp_path / "cut.mp4", 64, gop=12, muxer_options={"movflags": "faststart"})  # the index (moov) first
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    path.write_bytes(data[: len(data) // 2])  # the index still declares 64 frames
    out = tmp_path / "cut.zarr"
    r = run(runner, cli, "--input", path, "--out", out, "--model", tiny_model, "--samples", 1, "--seed", 2)
    assert r.exit_code == 0, r.output
    attrs = zarr.open_group(str(out)).attrs["segbatch"]
    stored = arrays(out)
    rows = stored["labels"].shape[0]
    assert attrs["status"] == "complete" and 0 < rows < 64
    missing, damaged, truncated = set(), set(), set()
    for p in attrs["problems"]:
        assert p["kind"] == "frames"
        for a, b in p["missing"]:
            missing |= set(range(a, b))
            if p.get("reason") == "truncated":
                truncated |= set(range(a, b))
        for a, b in p["damaged"]:
            damaged |= set(range(a, b))
    assert truncated == set(range(rows, 64)), "the frames the file lacks are not reported as truncated"
    answers = _model_answers(tiny_model, path, seed=2, samples=1)
    for i in range(64):  # every declared frame is in the store, or reported
        if i in missing:
            assert i >= rows or (stored["labels"][i] == 255).all()
        elif i not in damaged:
            assert _same_frame(stored["labels"][i], answers[i]), f"frame {i}"
        else:
            assert i < rows
    assert f"warning: frames {rows}:64 missing (truncated: " in r.output
    text = runner.invoke(cli, ["info", str(out)]).output
    assert f"{64 - rows} frames missing (the file is truncated)" in text and f"frames {rows}:64 missing (truncated: " in text


def test_variable_frame_rate_times_reach_the_store(ray_address, runner, cli, tiny_model, tmp_path):
    pts = [0, 40, 80, 200, 210, 220, 500, 540, 580, 600]
    path = write_video(tmp_path / "vfr.mkv", 10, pts=pts, time_base=Fraction(1, 1000))
    r = run(runner, cli, "--input", path, "--out", tmp_path / "vfr.zarr", "--model", tiny_model, "--samples", 1)
    assert r.exit_code == 0, r.output
    assert np.allclose(xr.open_zarr(tmp_path / "vfr.zarr").time.values, np.array(pts) / 1000)


@pytest.mark.skipif(not SAMPLES_DIR.is_dir(), reason="../shared/samples is not here (a fresh clone)")
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_sample_videos(ray_address, runner, cli, tiny_model, tmp_path, name):
    out = tmp_path / "real.zarr"
    r = run(runner, cli, "--input", SAMPLES_DIR / name, "--out", out, "--model", tiny_model, "--samples", 1, "--frames", "5:25", "--actors", 2)
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(out)
    assert ds.labels.shape[0] == 20 and not ds.attrs["segbatch"]["problems"]
    assert (ds.labels.values != 255).all()


def _namespace(name):
    import ray

    return next(a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name)


def test_export_overlay_video_and_png_frames(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "e.zarr"
    assert run(runner, cli, "--input", video, "--out", out, "--model", tiny_model, "--samples", 2, "--frames", "4:20").exit_code == 0
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "overlay.mp4"), "--quiet"])
    assert r.exit_code == 0, r.output
    import av

    with av.open(str(tmp_path / "overlay.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape[1:] == (128, 3) and frames[0].shape[0] > 48  # source | heat map, side by side, the legend below
    # the left half is the source under a 50% palette tint: its bit blocks still read as the source frame index
    assert [frame_index(f[:, :64]) for f in frames] == list(range(4, 20))
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "pngs"), "--quiet"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names[0] == "frame_000004.png" and names[-1] == "frame_000019.png" and len(names) == 16
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "overlay.mp4")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(cli, ["export", str(out), "--to", str(tmp_path / "pngs")])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_info_summarises_a_store(ray_address, runner, cli, video, tiny_model, tmp_path):
    out = tmp_path / "i.zarr"
    assert run(runner, cli, "--input", video, "--out", out, "--model", tiny_model, "--samples", 1, "--frames", ":16").exit_code == 0
    text = runner.invoke(cli, ["info", str(out)]).output
    assert re.search(r"complete \((\d+)/\1 units finished\)", text) and "labels       uint8 (frame=16, y=48, x=64)" in text
    data = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert data["status"] == "complete" and data["arrays"]["uncertainty"]["dims"] == ["frame", "y", "x"]


def test_unreachable_cluster_is_one_line_and_exit_2(runner, cli, video, tiny_model, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "segbatch",
        "run",
        "--input",
        str(video),
        "--out",
        str(tmp_path / "x.zarr"),
        "--model",
        str(tiny_model),
        "--address",
        f"127.0.0.1:{port}",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "cannot reach the Ray cluster" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()
