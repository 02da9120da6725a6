"""The engine's contract, once for every source: what `segbatch run` promises whatever it reads.

`SourceContract` holds the tests; each source subclasses it and says how to
make a small input of its kind (`source`), the options that kind runs with
(`ARGS`), the units its input is cut into with 1 and 2 actors (`UNITS`) and
the bad inputs it refuses (`BAD_INPUTS`). The contract: the same bits with 1
or N actors, after a killed driver and --resume, and after --overwrite; an
existing store is never replaced or resumed silently, a folder segbatch did
not write is never deleted; bad input and a model that does not fit are one
line and exit 2 before any work; `info` and `verify` describe the result.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr

from tests.helpers.drivers import finished_units, kill_driver_mid_run, start_driver, total_units
from tests.helpers.folders import write_many
from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import arrays, assert_same, invoke, one_line, run
from tests.helpers.videos import write_audio_only, write_video

# a bad input: (test id, make(folder) -> the input's path, extra options, what the one line says)
BadInput = tuple[str, Callable[[Path], Path], tuple[str, ...], str]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`bad_input` takes each of the class's BAD_INPUTS in turn."""
    if "bad_input" in metafunc.fixturenames:
        cases = metafunc.cls.BAD_INPUTS
        metafunc.parametrize("bad_input", [c[1:] for c in cases], ids=[c[0] for c in cases])


def status(store: Path) -> str:
    return zarr.open_group(str(store), mode="r").attrs["segbatch"]["status"]


def copy_store(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.zarr"
    shutil.copytree(store, out)
    return out


@pytest.fixture(scope="module")
def two_band_model(tmp_path_factory, cli_module, runner_module) -> Path:
    """A checkpoint whose model takes 2 input bands: no source here has images of 2 bands."""
    path = tmp_path_factory.mktemp("models") / "two.pt"
    r = invoke(runner_module, cli_module, "model", "init", "--classes", 3, "--in-channels", 2, "--width", 0.25, "--out", path)
    assert r.exit_code == 0, r.output
    return path


class SourceContract:
    """What every source promises; not collected itself (its name does not start with Test), only through subclasses."""

    KIND: ClassVar[str]  # the store's source kind
    ARGS: ClassVar[tuple[object, ...]] = ()  # options this kind runs with
    UNITS: ClassVar[dict[int, int]]  # actors -> units the input is cut into
    BAD_INPUTS: ClassVar[list[BadInput]]

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, tmp_path_factory) -> Path:
        """A small input of this kind, with enough units for a driver to be killed mid-run."""
        raise NotImplementedError

    @classmethod
    def args(cls, source: Path, out: Path, model: Path, *extra: object) -> tuple[object, ...]:
        """The options of every run here: this kind's input and options, 2 MC samples, then `extra` (the last of an option wins)."""
        return ("--input", source, "--out", out, "--model", model, "--samples", 2, *cls.ARGS, *extra)

    @pytest.fixture(scope="class")
    @classmethod
    def clean(cls, ray_address, runner_module, cli_module, source, tiny_model, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
        """A complete store made by 2 actors in one run, and its arrays: the reference every other run must equal bitwise."""
        out = tmp_path_factory.mktemp("clean") / "clean.zarr"
        r = run(runner_module, cli_module, *cls.args(source, out, tiny_model, "--actors", 2))
        assert r.exit_code == 0, r.output
        assert status(out) == "complete" and total_units(out) == cls.UNITS[2]
        return out, arrays(out)

    def test_same_arrays_with_1_or_2_actors(self, ray_address, runner, cli, source, tiny_model, clean, tmp_path):
        out = tmp_path / "one.zarr"
        r = run(runner, cli, *self.args(source, out, tiny_model, "--actors", 1))
        assert r.exit_code == 0, r.output
        assert total_units(out) == self.UNITS[1]  # where the unit size follows the actors, other units than the clean run's
        assert_same(arrays(out), clean[1])

    def test_a_killed_driver_is_finished_by_resume_with_its_own_settings_only(self, ray_address, runner, cli, source, tiny_model, clean, tmp_path):
        out = tmp_path / "resumed.zarr"
        proc = start_driver(ray_address, *self.args(source, out, tiny_model, "--actors", 1))
        done = kill_driver_mid_run(out, proc)
        assert total_units(out) == self.UNITS[1]

        # another setting is refused, naming what differs (after a warning that the dead driver's store is taken over)
        r = run(runner, cli, *self.args(source, out, tiny_model, "--samples", 1, "--resume"))
        assert r.exit_code == 2, r.output
        last = r.output.strip().splitlines()[-1]
        assert "cannot resume" in last and "samples: store has 2, now 1" in last and "Traceback" not in r.output
        assert status(out) == "running" and finished_units(out) >= done

        # the same settings (other actors) finish it: the arrays of the clean run, bit for bit, and every chunk matches its digest
        r = run(runner, cli, *self.args(source, out, tiny_model, "--actors", 2, "--resume"))
        assert r.exit_code == 0, r.output
        skipped = re.search(r"(\d+) units already done", r.output)
        assert skipped and int(skipped.group(1)) >= done, r.output
        assert_same(arrays(out), clean[1])
        assert status(out) == "complete"
        assert invoke(runner, cli, "verify", out).exit_code == 0

    def test_an_existing_store_is_refused_without_resume_or_overwrite(self, ray_address, runner, cli, source, tiny_model, clean, tmp_path):
        out = copy_store(clean[0], tmp_path)
        r = run(runner, cli, *self.args(source, out, tiny_model))
        assert r.exit_code == 2
        line = one_line(r.output)
        assert "exists" in line and "--resume" in line and "--overwrite" in line
        assert_same(arrays(out), clean[1])
        assert status(out) == "complete"

        # --overwrite replaces it: a store of the new settings (one pass, no uncertainty), none of the old arrays left
        r = run(runner, cli, "--input", source, "--out", out, "--model", tiny_model, "--samples", 0, *self.ARGS, "--actors", 1, "--overwrite")
        assert r.exit_code == 0, r.output
        attrs = zarr.open_group(str(out), mode="r").attrs["segbatch"]
        assert attrs["status"] == "complete" and attrs["samples"] == 0
        assert "uncertainty" not in arrays(out) and "uncertainty" in clean[1]
        assert arrays(out)["labels"].shape == clean[1]["labels"].shape

    @pytest.mark.parametrize("kind", ["a plain folder", "a foreign zarr store"])
    def test_overwrite_refuses_a_folder_segbatch_did_not_write(self, ray_address, runner, cli, source, tiny_model, tmp_path, kind):
        folder = tmp_path / "precious"
        if kind == "a plain folder":
            folder.mkdir()
            keep = folder / "thesis.tex"
            keep.write_text("years of work")
            message = "is not a Zarr v3 store"
        else:
            zarr.open_group(str(folder), mode="w", zarr_format=3).create_array("data", shape=(4,), dtype="int32")[...] = 7
            keep = folder / "data" / "zarr.json"
            message = "not one segbatch wrote"
        r = run(runner, cli, *self.args(source, folder, tiny_model, "--overwrite"))
        assert r.exit_code == 2
        assert message in one_line(r.output)
        assert keep.exists()
        if kind == "a foreign zarr store":
            assert (zarr.open_group(str(folder), mode="r")["data"][...] == 7).all()

    def test_bad_input_is_one_line_and_exit_2(self, ray_address, runner, cli, tiny_model, tmp_path, bad_input):
        make, extra, message = bad_input
        r = run(runner, cli, "--input", make(tmp_path), "--out", tmp_path / "x.zarr", "--model", tiny_model, *extra)
        assert r.exit_code == 2, r.output
        assert message in one_line(r.output)
        assert not (tmp_path / "x.zarr").exists()

    def test_a_model_with_other_bands_is_refused_before_any_work(self, ray_address, runner, cli, source, two_band_model, tmp_path):
        r = run(runner, cli, *self.args(source, tmp_path / "x.zarr", two_band_model))
        assert r.exit_code == 2, r.output
        assert "the model takes 2" in one_line(r.output)
        assert not (tmp_path / "x.zarr").exists()

    def test_an_output_folder_that_does_not_exist_is_one_line_and_exit_2(self, ray_address, runner, cli, source, tiny_model, tmp_path):
        out = tmp_path / "no" / "such" / "x.zarr"
        r = run(runner, cli, *self.args(source, out, tiny_model))
        assert r.exit_code == 2, r.output
        assert "does not exist" in one_line(r.output)
        assert not (tmp_path / "no").exists()

    def test_info_and_verify_describe_the_result(self, runner, cli, clean, tmp_path):
        out = copy_store(clean[0], tmp_path)  # verify may mark what it checks: a copy, so no other test sees it
        info: dict[str, Any] = json.loads(invoke(runner, cli, "info", out, "--json").output)
        assert info["status"] == "complete" and info["source"]["kind"] == self.KIND
        assert info["units"] == {"finished": self.UNITS[2], "total": self.UNITS[2]}
        r = invoke(runner, cli, "verify", out)
        assert r.exit_code == 0 and "all match" in r.output

        chunk = min((out / "labels").glob("c.*"))  # chunk files: c.<i>.<j>... in the array's folder
        chunk.unlink()
        r = invoke(runner, cli, "verify", out)
        assert r.exit_code == 1 and "labels/" in r.output and "missing" in r.output
        assert status(out) == "damaged"


def _text_file(path: Path) -> Path:
    path.write_text("hello")
    return path


def _folder(make: Callable[[Path], object]) -> Callable[[Path], Path]:
    """An input folder `make` fills (or leaves empty)."""

    def made(d: Path) -> Path:
        folder = d / "in"
        folder.mkdir()
        make(folder)
        return folder

    return made


class TestVideoSource(SourceContract):
    KIND = "video"
    UNITS: ClassVar[dict[int, int]] = {1: 10, 2: 20}  # 160 frames: units of 16 frames for 1 actor, 8 for 2
    BAD_INPUTS: ClassVar[list[BadInput]] = [
        ("missing", lambda d: d / "missing.mp4", (), "no such file"),
        ("text", lambda d: _text_file(d / "notes.mp4"), (), "not a readable video"),
        ("audio only", lambda d: write_audio_only(d / "song.mka"), (), "no video stream"),
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, tmp_path_factory) -> Path:
        return write_video(tmp_path_factory.mktemp("videos") / "drive.mp4", 160, gop=16)


class TestRasterSource(SourceContract):
    KIND = "raster"
    ARGS = ("--tile", 128, "--overlap", 16)
    UNITS: ClassVar[dict[int, int]] = {1: 30, 2: 30}  # 480x576: 5x6 tiles of core 96, whatever the actors
    BAD_INPUTS: ClassVar[list[BadInput]] = [
        ("text", lambda d: _text_file(d / "notes.tif"), (), "not a readable raster"),
        ("6 bands", lambda d: write_geotiff(d / "six.tif", bands=6), (), "6 bands but the model takes 3"),
        ("band out of range", lambda d: write_geotiff(d / "six.tif", bands=6), ("--bands", "7,2,1"), "band 7 is out of range"),
        ("no tile core", lambda d: write_geotiff(d / "a.tif"), ("--tile", "128", "--overlap", "64"), "larger than twice"),
        ("rotated", lambda d: write_geotiff(d / "rot.tif", transform=_rotated()), (), "rotated or sheared"),
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, tmp_path_factory) -> Path:
        return write_geotiff(tmp_path_factory.mktemp("rasters") / "scene.tif", height=480, width=576)


def _rotated():
    from rasterio.transform import Affine

    return Affine(30.0, 5.0, 0, 5.0, -30.0, 0)


class TestImageFolderSource(SourceContract):
    KIND = "images"
    UNITS: ClassVar[dict[int, int]] = {1: 8, 2: 16}  # 48 images: units of 6 images for 1 actor, 3 for 2
    BAD_INPUTS: ClassVar[list[BadInput]] = [
        ("empty folder", _folder(lambda f: None), (), "has no images"),
        ("no image files", _folder(lambda f: (f / "readme.txt").write_text("hi")), (), "has no images"),
        ("no readable image", _folder(lambda f: (f / "x.png").write_bytes(b"not a png")), (), "none of its 1 images is readable"),
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, tmp_path_factory) -> Path:
        return write_many(tmp_path_factory.mktemp("folders") / "many", 48)
