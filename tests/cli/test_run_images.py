"""`segbatch run` on image folders, through the CLI as a user runs it, on the session's shared Ray runtime."""

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from tests.helpers.folders import pixels, write_image, write_mixed_folder
from tests.helpers.stores import run


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed_folder(tmp_path_factory.mktemp("folders") / "mixed")


@pytest.fixture(scope="module")
def mixed_run(ray_address, runner_module, cli_module, mixed, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "mixed.zarr"
    r = run(runner_module, cli_module, "--input", mixed, "--out", out, "--model", tiny_model, "--samples", 2, "--seed", 5, "--actors", 2)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_every_image_is_segmented_in_its_own_row(mixed_run, mixed, tiny_model):
    out, output = mixed_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out, mask_and_scale={"labels": False})
    assert ds.labels.dims == ("image", "y", "x") and ds.labels.shape == (6, 64, 56)
    assert {"path", "height", "width"} <= set(ds.coords) and ds.path.dims == ("image",)
    paths = [str(p) for p in ds.path.values]
    assert paths == ["a.png", "b.jpg", "nested/c.png", "nested/deeper/d.tif", "nested/four.tif", "nested/truncated.jpg"]
    assert list(ds.height.values) == [40, 64, 30, 32, 24, 36] and list(ds.width.values) == [56, 48, 50, 40, 24, 44]
    assert ds.height.dtype == np.int32
    root = zarr.open_group(str(out))
    assert root["labels"].chunks == (1, 64, 56)
    attrs = ds.attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["source"] == {
        "path": str(mixed.resolve()),
        "kind": "images",
        "images": 6,
        "max_height": 64,
        "max_width": 56,
    }
    assert attrs["unit_images"] == 1 and attrs["config"]["source"]["images"] == 6 and len(attrs["config"]["source"]["listing_sha256"]) == 64

    # each image's row holds the model's answer on that very image (grey repeated to RGB), with its own seed
    from segbatch.mc import derive_seed, mc_predict
    from segbatch.model import load_checkpoint
    from segbatch.sources.images import read_image, to_unit_float

    model = load_checkpoint(tiny_model).model
    labels, unc, ent = ds.labels.values, ds.uncertainty.values, ds.entropy.values
    for i, name in enumerate(paths[:4]):
        x = torch.from_numpy(to_unit_float(read_image(mixed / name)))[None]
        ref = mc_predict(model, x.expand(1, 3, -1, -1).contiguous(), samples=2, seed=derive_seed(5, i))
        h, w = int(ds.height[i]), int(ds.width[i])
        np.testing.assert_array_equal(labels[i, :h, :w], ref["labels"][0].numpy(), err_msg=name)
        np.testing.assert_array_equal(unc[i, :h, :w], ref["uncertainty"][0].numpy().astype(np.float16), err_msg=name)
        # outside the image: fill, never computed
        assert (labels[i, h:] == 255).all() and (labels[i, :, w:] == 255).all()
        assert np.isnan(ent[i, h:]).all() and np.isnan(unc[i, :, w:]).all()
    # the xarray recipe of the README
    i = 2
    crop = ds.labels.isel(image=i)[: int(ds.height[i]), : int(ds.width[i])]
    assert crop.shape == (30, 50) and (crop.values != 255).all()

    # unusable files: listed once each, their rows fill, the rest complete
    problems = {p["path"]: p for p in attrs["problems"]}
    assert set(problems) == {"corrupt.png", "nested/four.tif", "nested/truncated.jpg"}
    assert problems["corrupt.png"]["image"] is None and problems["corrupt.png"]["kind"] == "unreadable"
    assert problems["nested/truncated.jpg"]["image"] == 5 and "truncated" in problems["nested/truncated.jpg"]["error"]
    assert problems["nested/four.tif"]["image"] == 4 and "4 bands" in problems["nested/four.tif"]["error"]
    assert (labels[4:] == 255).all() and np.isnan(ent[4:]).all()
    assert not (out / "labels" / "c" / "5").exists()  # an image never segmented costs no disk
    assert attrs["summary"]["images"] == 4 and attrs["summary"]["unreadable"] == 3
    assert "segmented 4 images" in output
    warned = [line for line in output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 3 and any("corrupt.png" in w for w in warned) and any("nested/truncated.jpg" in w for w in warned)


def test_info_shows_images_and_unreadable_files(mixed_run, runner, cli):
    out, _ = mixed_run
    text = runner.invoke(cli, ["info", str(out)]).output
    assert "images       6 (largest 56x64" in text
    assert "3 unreadable images" in text and "corrupt.png: unreadable image" in text and "nested/four.tif: 4 bands" in text
    assert "labels       uint8 (image=6, y=64, x=56)" in text and "4 images in" in text
    data = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert data["problems"] == zarr.open_group(str(out)).attrs["segbatch"]["problems"]


def test_resize_and_extra_outputs(ray_address, runner, cli, mixed, tiny_model, tmp_path):
    out = tmp_path / "r.zarr"
    args = ("--model", tiny_model, "--samples", 2, "--actors", 1, "--resize", "32x32", "--outputs", "mutual_information,probs", "--float32")
    r = run(runner, cli, "--input", mixed, "--out", out, *args)
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(out, mask_and_scale={"labels": False})
    assert ds.probs.dims == ("image", "y", "x", "class") and ds.probs.shape == (6, 64, 56, 11) and "mutual_information" in ds
    for i in range(4):
        h, w = int(ds.height[i]), int(ds.width[i])
        np.testing.assert_array_equal(ds.labels.values[i, :h, :w], ds.probs.values[i, :h, :w].argmax(-1))
        assert np.isnan(ds.probs.values[i, h:]).all()


def test_resume_refuses_a_changed_folder(ray_address, runner, cli, tiny_model, tmp_path):
    folder = tmp_path / "f"
    write_image(folder / "a.png", pixels(1, 24, 32))
    args = ["--input", folder, "--out", tmp_path / "s.zarr", "--model", tiny_model, "--samples", 1]
    assert run(runner, cli, *args).exit_code == 0
    write_image(folder / "b.png", pixels(2, 24, 32))
    r = run(runner, cli, *args, "--resume")
    assert r.exit_code == 2 and "cannot resume" in r.output and "source" in r.output


@pytest.mark.parametrize("option", [("--frames", "0:2"), ("--tile", "256"), ("--overlap", "64"), ("--bands", "1,2,3"), ("--keep-tiles",)])
def test_video_and_raster_options_are_refused_for_a_folder(runner, cli, mixed, tiny_model, tmp_path, option):
    r = run(runner, cli, "--input", mixed, "--out", tmp_path / "x.zarr", "--model", tiny_model, *option)
    assert r.exit_code == 2, r.output
    assert option[0] in r.output and "image folder" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()
