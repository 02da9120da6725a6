"""`segbatch verify`'s advice: the command it names for a damaged store is one that repairs it."""

from __future__ import annotations

import pytest

from tests.helpers.rasters import write_geotiff
from tests.helpers.stores import invoke, run


def _damage_a_stitched_chunk(store):
    chunk = min((store / "labels").glob("c.*"))
    chunk.unlink()


@pytest.mark.parametrize(("keep_tiles", "repair"), [(False, "--overwrite"), (True, "--resume")])
def test_the_advice_for_a_damaged_raster_store_names_the_command_that_repairs_it(ray_address, runner, cli, tiny_model, tmp_path, keep_tiles, repair):
    scene = write_geotiff(tmp_path / "scene.tif", height=200, width=260)
    out = tmp_path / "scene.zarr"
    args = ["--input", scene, "--out", out, "--model", tiny_model, "--samples", 1, "--tile", 128, "--overlap", 16, *(["--keep-tiles"] if keep_tiles else [])]
    assert run(runner, cli, *args).exit_code == 0
    _damage_a_stitched_chunk(out)

    r = invoke(runner, cli, "verify", out)
    assert r.exit_code == 1
    (advice,) = [line for line in r.output.splitlines() if line.startswith(f"{out} is damaged")]
    assert f"`segbatch run` with its options and {repair}" in advice, advice
    if not keep_tiles:
        assert "tiles/ were removed after stitching" in advice

    r = run(runner, cli, *args, repair)  # the command it names works
    assert r.exit_code == 0, r.output
    assert invoke(runner, cli, "verify", out).exit_code == 0
