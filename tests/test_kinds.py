"""The registry of kinds of input: each kind complete and consistent, and a new kind seen wherever kinds are listed or asked."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from segbatch import jobstore, schema
from segbatch.audit.items import item_count, iter_blocks
from segbatch.audit.ranking import spacing_for
from segbatch.errors import InputError, StoreError
from segbatch.kinds import KINDS, Kind, kind
from segbatch.kinds.images import Images

HEAVY = ("torch", "ray", "av", "rasterio", "zarr", "numpy")


def test_the_registry_holds_video_raster_and_images_in_that_order():
    assert list(KINDS) == ["video", "raster", "images"]
    assert all(isinstance(k, Kind) and name == k.name and kind(name) is k for name, k in KINDS.items())


def test_each_kind_has_the_words_messages_print():
    words = {name: (k.noun, k.article, k.plural) for name, k in KINDS.items()}
    assert words == {
        "video": ("frame", "a video", "videos"),
        "raster": ("tile", "a raster", "rasters"),
        "images": ("image", "an image folder", "image folders"),
    }


def test_options_are_segbatch_run_parameters_and_none_applies_to_every_kind():
    from segbatch.cli.run import run

    params = {p.name for p in run.params}
    for k in KINDS.values():
        assert k.options and set(k.options) <= params, f"{k.name}: {sorted(set(k.options) - params)} are no options of segbatch run"
    assert not set.intersection(*(set(k.options) for k in KINDS.values()))


def test_many_input_jobs_are_of_videos_or_rasters():
    assert [k.name for k in KINDS.values() if k.many] == ["video", "raster"]


@pytest.mark.parametrize("name", list(KINDS))
def test_the_source_class_is_the_engines_source_of_that_kind(name):
    source = KINDS[name].source_class()
    assert isinstance(source, type) and source.kind == name


def test_an_unknown_kind_is_an_input_error_naming_the_known_ones():
    with pytest.raises(InputError, match=r"'zarr' is no kind of input segbatch knows \(video, raster, images\)"):
        kind("zarr")


def test_importing_the_registry_loads_nothing_heavy():
    code = "import sys, segbatch.kinds; print('\\n'.join(sys.modules))"
    modules = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not sorted(m for m in modules if m.split(".")[0] in HEAVY)


class _Pages(Images):
    """A fourth kind for the tests: a folder of multi-page TIFFs, read like an image folder, its pages the items."""

    name = "tiffpages"
    noun = "page"
    article = "a multi-page TIFF folder"
    plural = "multi-page TIFF folders"
    many = True
    unit_size = "unit_pages"

    def item_count(self, root):
        return 7

    def layout(self, attrs):
        return (attrs["source"]["images"], attrs["source"]["max_height"], attrs["source"]["max_width"]), 1


@pytest.fixture
def pages(monkeypatch):
    monkeypatch.setitem(KINDS, "tiffpages", _Pages())
    return KINDS["tiffpages"]


def _attrs(kind_name: str, **more) -> dict:
    return {
        "version": "0.3.0",
        "source": {"kind": kind_name, "path": "/data/pages", "images": 3, "max_height": 4, "max_width": 5},
        "model": {"arch": "segnet", "classes": ["sky"], "palette": [[0, 0, 255]], "sha256": "0" * 64},
        "samples": 0,
        "seed": 0,
        "config": {},
        "status": "complete",
        **more,
    }


def test_a_new_kind_is_one_stores_may_name_with_its_own_fields(pages):
    assert schema.root_problem(_attrs("nope")) == "source.kind is 'nope', not one of video, raster, images, tiffpages"
    assert schema.root_problem(_attrs("tiffpages")) == "unit_pages is missing"
    assert schema.root_problem(_attrs("tiffpages", unit_pages=0)) == "unit_pages is 0, not an integer >= 1"
    assert schema.root_problem(_attrs("tiffpages", unit_pages=2)) is None
    entry = {"images": [0, 2], "unreadable": [], "run": "r1"}
    assert schema.entry_problem(entry, "tiffpages", {}, needs_run=True) is None
    assert schema.entry_problem({"images": [0, 2]}, "tiffpages", {}, needs_run=True) == "unreadable is missing"


def test_a_new_kind_that_makes_jobs_of_many_is_one_a_job_may_hold(pages):
    job = {"kind": "job", "input_kind": "images", "status": "complete", "inputs": [], "model": {}, "config": {}, "runs": []}
    with pytest.raises(StoreError, match="input_kind 'images' is not one of video, raster, tiffpages"):
        jobstore.job_attrs(SimpleNamespace(attrs={"segbatch": job}))


def test_the_audit_asks_the_stores_kind_for_its_items_and_spacing(pages):
    root = {
        "labels": np.zeros((2, 4, 5), np.uint8),
        "path": np.array(["a.tif#1", "a.tif#2"]),
        "height": np.array([4, 3]),
        "width": np.array([5, 5]),
    }
    assert item_count(root, "tiffpages") == 7
    blocks = list(iter_blocks(root, _attrs("tiffpages"), group="scans"))
    assert [(item.name, item.group) for block in blocks for item, _ in block.items] == [("a.tif#1", "scans"), ("a.tif#2", "scans")]
    assert spacing_for(root, "tiffpages", None, 20).kind == "tiffpages"
