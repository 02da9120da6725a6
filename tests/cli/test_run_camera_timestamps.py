"""`segbatch run` on a camera file whose timestamps lie: H.264 with B-frames muxed with pts == dts.

Every frame is stored once, where a sequential decode shows it; 1 and 2
actors (units of 16 and 8 frames), `--frames A:B` and a `--resume` repair give
the same rows.
"""

import shutil

import av
import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from tests.helpers.stores import arrays, assert_same, invoke, run
from tests.helpers.videos import frame_index, write_pts_equal_dts

FRAMES = 128
ARGS = ("--samples", 2, "--seed", 5, "--batch-size", 3)


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    return write_pts_equal_dts(tmp_path_factory.mktemp("camera") / "camera.mp4", FRAMES, gop=12, open_gop=True)


@pytest.fixture(scope="module")
def answers(camera, tiny_model):
    """The model's labels on each frame of a sequential decode, by its place in the decoder's output."""
    from segbatch.mc import derive_seed, mc_predict
    from segbatch.model import load_checkpoint

    model = load_checkpoint(tiny_model).model
    out = []
    with av.open(str(camera)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            assert frame_index(rgb) == i
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
            out.append(mc_predict(model, x, samples=2, seed=derive_seed(5, i))["labels"][0].numpy())
    assert len(out) == FRAMES
    return out


@pytest.fixture(scope="module")
def one_actor(ray_address, runner_module, cli_module, camera, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.zarr"
    r = run(runner_module, cli_module, "--input", camera, "--out", out, "--model", tiny_model, *ARGS, "--actors", 1)
    assert r.exit_code == 0, r.output
    return out


def _same_frame(stored, answer):
    """Whether a stored row is the model's answer on that frame (another frame's agrees on about 2/3 of the pixels)."""
    return (stored == answer).mean() > 0.99


def test_every_frame_once_in_the_decoders_order_with_1_or_2_actors(runner, cli, camera, tiny_model, one_actor, answers, tmp_path):
    two = tmp_path / "two.zarr"
    r = run(runner, cli, "--input", camera, "--out", two, "--model", tiny_model, *ARGS, "--actors", 2)
    assert r.exit_code == 0, r.output
    for store in (one_actor, two):
        attrs = zarr.open_group(str(store)).attrs["segbatch"]
        assert attrs["status"] == "complete" and attrs["problems"] == [], attrs["problems"]
        assert attrs["source"]["frames"] == FRAMES and attrs["source"]["frame_order"] == "decoder output"
    assert zarr.open_group(str(one_actor)).attrs["segbatch"]["unit_frames"] != zarr.open_group(str(two)).attrs["segbatch"]["unit_frames"]
    assert_same(arrays(one_actor), arrays(two))
    ds = xr.open_zarr(one_actor)
    assert np.allclose(ds.time.values, np.arange(FRAMES) / 25)  # the packets' times, sorted: monotonic
    labels = ds.labels.values
    for i in range(FRAMES):  # each row holds the model's answer on the frame a sequential decode shows there
        assert _same_frame(labels[i], answers[i]), f"frame {i}"


def test_frames_range_and_resume_are_exact(runner, cli, camera, tiny_model, one_actor, answers, tmp_path):
    part = tmp_path / "part.zarr"
    r = run(runner, cli, "--input", camera, "--out", part, "--model", tiny_model, *ARGS, "--frames", "11:45", "--actors", 2)
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(part)
    assert ds.labels.shape[0] == 34 and ds.attrs["segbatch"]["problems"] == []
    assert np.allclose(ds.time.values, np.arange(11, 45) / 25)
    for row in range(34):
        assert _same_frame(ds.labels.values[row], answers[11 + row]), f"frame {11 + row}"

    repaired = tmp_path / "repaired.zarr"
    shutil.copytree(one_actor, repaired)
    for name in ("labels", "entropy"):
        (repaired / name / "c.5.0.0").unlink()  # frames 40:48, in the middle of a keyframe's group
    assert invoke(runner, cli, "verify", repaired).exit_code == 1
    r = run(runner, cli, "--input", camera, "--out", repaired, "--model", tiny_model, *ARGS, "--actors", 2, "--resume")
    assert r.exit_code == 0, r.output
    assert_same(arrays(repaired), arrays(one_actor))
