"""The GPU path, where there is one: Ray assigns the device, autocast precisions, NVDEC decoding (skipped on CPU-only machines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from segbatch.demo.video import write_demo_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_demo_video(tmp_path_factory.mktemp("gpu") / "drive.mp4", 24, 120, 160)


def _run(runner, cli, *args):
    return runner.invoke(cli, ["run", *map(str, args)])  # not --quiet: the closing line names the device


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_actors_run_on_the_gpu_ray_gave_them_in_each_precision(ray_address, runner, cli, clip, tmp_path, precision):
    full, half = tmp_path / "fp32.zarr", tmp_path / f"{precision}.zarr"
    r = _run(runner, cli, "--input", clip, "--out", full, "--samples", 4, "--gpus-per-actor", 1)
    assert r.exit_code == 0, r.output
    assert "[cuda]" in r.output
    assert _run(runner, cli, "--input", clip, "--out", half, "--samples", 4, "--gpus-per-actor", 1, "--precision", precision).exit_code == 0
    agree = (zarr.open_group(str(full))["labels"][...] == zarr.open_group(str(half))["labels"][...]).mean()
    assert agree > 0.97


def test_nvdec_decoding_matches_software_decoding(ray_address, runner, cli, clip, tmp_path):
    from segbatch.errors import InputError
    from segbatch.sources.video import check_hwaccel, probe_video, read_frames

    plan = probe_video(clip)
    try:
        check_hwaccel(plan, "cuda")
    except InputError as exc:
        pytest.skip(str(exc))
    soft = np.stack([f for _, f in read_frames(plan, 0, 8)])
    hard = np.stack([f for _, f in read_frames(plan, 0, 8, hwaccel="cuda")])
    assert np.abs(soft.astype(int) - hard.astype(int)).mean() < 2.0  # colour conversion may differ by rounding
    r = _run(runner, cli, "--input", clip, "--out", tmp_path / "nvdec.zarr", "--samples", 2, "--gpus-per-actor", 1, "--hwaccel", "cuda")
    assert r.exit_code == 0, r.output


def test_mc_predict_on_the_gpu_draws_the_cpus_masks():
    """Counter-based masks: the GPU's result is the CPU's up to the kernels' rounding (TF32 included), and bitwise repeatable."""
    from segbatch.mc import mc_predict
    from segbatch.model import build_model

    torch.manual_seed(0)
    model = build_model("segnet-basic", 5, width=0.25).eval()
    x = torch.rand(2, 3, 48, 64)
    cpu = mc_predict(model, x, samples=4, seed=[1, 2])
    other = mc_predict(model, x, samples=4, seed=[3, 4])  # other masks
    model.cuda()
    gpu = mc_predict(model, x.cuda(), samples=4, seed=[1, 2])
    again = mc_predict(model, x.cuda(), samples=4, seed=[1, 2])
    for key in cpu:
        assert torch.equal(gpu[key], again[key]), key
    for key in ("probs", "uncertainty", "mutual_information"):
        off = (gpu[key].cpu() - cpu[key]).abs().mean()
        assert off < 0.05 * (other[key] - cpu[key]).abs().mean(), key
    assert (gpu["labels"].cpu() == cpu["labels"]).float().mean() > 0.98
