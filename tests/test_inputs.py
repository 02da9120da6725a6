"""Expanding one --input value into many inputs: folders, globs, manifests, STAC files, and the names each input's group gets."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path

import fsspec
import pystac
import pytest

from segbatch.errors import InputError
from segbatch.inputs import Input, expand_inputs, is_many, sanitize_name
from tests.helpers.folders import pixels, write_image
from tests.helpers.rasters import write_geotiff

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def touch(path: Path) -> Path:
    """A file whose suffix alone says its kind (kind detection reads no bytes of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def geotiff(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, height=16, width=16, bands=1, hole=False)


def names(inputs: list[Input]) -> list[str]:
    return [i.name for i in inputs]


def sha8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# --- folders ---


def test_folder_of_videos_recursive_skipping_hidden_and_other_files(tmp_path: Path) -> None:
    root = tmp_path / "drives"
    for rel in ("day1/cam3.mp4", "day1/cam4.MKV", "day2/cam3.mp4", "day2/notes.txt", "day2/thumb.png", ".cache/old.mp4", "day1/.partial.mp4"):
        touch(root / rel)
    assert is_many(str(root))
    inputs = expand_inputs(str(root))
    assert names(inputs) == ["day1--cam3", "day1--cam4", "day2--cam3"]
    assert [i.location for i in inputs] == [root / "day1/cam3.mp4", root / "day1/cam4.MKV", root / "day2/cam3.mp4"]
    assert all(isinstance(i.location, Path) and i.location.is_absolute() for i in inputs)
    assert {i.kind for i in inputs} == {"video"}


def test_folder_given_relative_gives_absolute_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path / "clips" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    [only] = expand_inputs("clips")
    assert only.location == tmp_path / "clips" / "a.mp4"
    assert only.name == "a"


def test_folder_of_georeferenced_rasters(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    geotiff(root / "a.tif")
    geotiff(root / "north" / "b.tiff")
    write_image(root / "a_quicklook.png", pixels(1, 8, 8))  # a quicklook beside the rasters: not an input
    (root / "a.tif.aux.xml").write_text("<PAMDataset/>")
    assert is_many(str(root))
    inputs = expand_inputs(str(root))
    assert names(inputs) == ["a", "north--b"]
    assert [i.location for i in inputs] == [root / "a.tif", root / "north" / "b.tiff"]
    assert {i.kind for i in inputs} == {"raster"}


def test_folder_of_plain_images_is_one_input(tmp_path: Path) -> None:
    pngs = tmp_path / "pngs"
    write_image(pngs / "a.png", pixels(1, 8, 8))
    write_image(pngs / "b.jpg", pixels(2, 8, 8))
    tiffs = tmp_path / "tiffs"
    write_image(tiffs / "a.tif", pixels(3, 8, 8))  # a plain TIFF: no CRS, identity transform
    write_image(tiffs / "b.png", pixels(4, 8, 8))
    assert not is_many(str(pngs))
    assert not is_many(str(tiffs))
    with pytest.raises(InputError, match="not georeferenced"):
        expand_inputs(str(tiffs))
    with pytest.raises(InputError, match="no videos or rasters"):
        expand_inputs(str(pngs))


def test_a_geotransform_without_crs_is_georeferenced(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "a.tif", height=16, width=16, bands=1, crs=None, hole=False)  # a geotransform alone still places the pixels
    assert is_many(str(tmp_path))
    assert [i.kind for i in expand_inputs(str(tmp_path))] == ["raster"]


def test_georeferencing_is_judged_on_the_first_raster_sorted(tmp_path: Path) -> None:
    geotiff(tmp_path / "b.tif")
    write_image(tmp_path / "a.tif", pixels(3, 8, 8))  # sorts first and is plain: the folder is images
    assert not is_many(str(tmp_path))


def test_single_file_and_missing_path_are_not_many(tmp_path: Path) -> None:
    video = touch(tmp_path / "one.mp4")
    assert not is_many(str(video))
    assert not is_many(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="names one input"):
        expand_inputs(str(video))
    with pytest.raises(InputError, match="no such file or folder"):
        expand_inputs(str(tmp_path / "missing"))


def test_folder_mixing_videos_and_rasters_is_refused_naming_one_of_each(tmp_path: Path) -> None:
    touch(tmp_path / "cam.mp4")
    geotiff(tmp_path / "sub" / "scene.tif")
    assert is_many(str(tmp_path))  # many, so that expanding it explains the refusal
    with pytest.raises(InputError) as err:
        expand_inputs(str(tmp_path))
    message = str(err.value)
    assert "cam.mp4" in message and "scene.tif" in message and "\n" not in message


# --- globs ---


def test_recursive_glob_names_from_its_fixed_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in ("drives/day1/cam1.mp4", "drives/day2/x/cam2.mp4", "drives/day2/cam2.mov", "drives/.hidden/cam9.mp4", "drives/cam0.mp4"):
        touch(tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    assert is_many("drives/**/*.mp4")
    inputs = expand_inputs("drives/**/*.mp4")
    assert names(inputs) == ["cam0", "day1--cam1", "day2--x--cam2"]
    assert inputs[0].location == tmp_path / "drives" / "cam0.mp4"
    assert all(isinstance(i.location, Path) and i.location.is_absolute() for i in inputs)
    assert expand_inputs(f"{tmp_path}/drives/**/*.mp4") == inputs  # the same inputs, the same names, absolute pattern or not


def test_glob_skips_sidecars_and_folders(tmp_path: Path) -> None:
    geotiff(tmp_path / "s" / "a.tif")
    (tmp_path / "s" / "a.tif.aux.xml").write_text("<PAMDataset/>")
    (tmp_path / "s" / "a.tfw").write_text("30\n0\n0\n-30\n0\n0\n")
    (tmp_path / "s" / "sub").mkdir()
    inputs = expand_inputs(f"{tmp_path}/s/*")
    assert [(i.name, i.kind) for i in inputs] == [("a", "raster")]


def test_glob_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    touch(tmp_path / "a.mov")
    pattern = f"{tmp_path}/**/*.mp4"
    with pytest.raises(InputError, match=re.escape(pattern)):
        expand_inputs(pattern)


def test_existing_file_with_glob_characters_is_taken_as_named(tmp_path: Path) -> None:
    odd = touch(tmp_path / "scene[1].mp4")
    assert not is_many(str(odd))
    assert is_many(str(tmp_path / "scene[12].mp4"))  # no such file: a pattern


def test_http_query_string_is_not_a_glob() -> None:
    assert not is_many("https://example.com/v/cam.mp4?X-Amz-Signature=abc")
    assert is_many("s3://bucket/v/*.mp4")


@pytest.fixture
def bucket():
    """An in-memory fsspec bucket, emptied afterwards (the memory filesystem is shared by the process)."""
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/bkt", recursive=True)


def test_url_glob_keeps_the_scheme_and_skips_hidden(bucket) -> None:
    for key in ("/bkt/scenes/a.tif", "/bkt/scenes/2024/b.tif", "/bkt/scenes/.tmp/c.tif", "/bkt/scenes/readme.txt"):
        bucket.pipe(key, b"x")
    inputs = expand_inputs("memory://bkt/scenes/**/*.tif")
    assert [i.location for i in inputs] == ["memory://bkt/scenes/2024/b.tif", "memory://bkt/scenes/a.tif"]
    assert names(inputs) == ["2024--b", "a"]
    assert {i.kind for i in inputs} == {"raster"}
    with pytest.raises(InputError, match="no files match"):
        expand_inputs("memory://bkt/scenes/*.mp4")


def test_glob_never_walks_around_a_symlink_loop_and_lists_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path / "drives" / "b.mp4")
    touch(tmp_path / "drives" / "sub" / "a.mp4")
    (tmp_path / "drives" / "sub" / "loop").symlink_to(".")  # sub/loop/loop/... is sub again
    (tmp_path / "drives" / "up").symlink_to("..")  # a link to a parent folder of the pattern's base
    touch(tmp_path / "other" / "c.mp4")
    (tmp_path / "drives" / "linked").symlink_to(tmp_path / "other")  # a symlinked folder that is no loop is followed
    (tmp_path / "drives" / "latest.mp4").symlink_to("b.mp4")  # a second spelling of b.mp4
    monkeypatch.chdir(tmp_path / "drives")
    inputs = expand_inputs("**/*.mp4")
    assert [i.location for i in inputs] == [tmp_path / "drives/b.mp4", tmp_path / "drives/linked/c.mp4", tmp_path / "drives/sub/a.mp4"]
    assert names(inputs) == ["b", "linked--c", "sub--a"]


def test_folder_lists_a_file_and_its_symlinks_once(tmp_path: Path) -> None:
    touch(tmp_path / "clips" / "day1" / "a.mp4")
    (tmp_path / "clips" / "latest.mp4").symlink_to("day1/a.mp4")
    (tmp_path / "clips" / "b.mp4").symlink_to(touch(tmp_path / "elsewhere" / "b.mp4"))  # a link to a file listed nowhere else stays
    inputs = expand_inputs(str(tmp_path / "clips"))
    assert names(inputs) == ["b", "day1--a"]  # the file's own path names it, not the link's


# --- manifests ---


def test_manifest_comments_blanks_and_paths_relative_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    touch(tmp_path / "data" / "day1" / "cam1.mp4")
    manifest = lists / "inputs.txt"
    manifest.write_text(
        "# drives of the week\n"
        "\n"
        "  ../data/day1/cam1.mp4  \n"
        "../data/day2/cam2.mp4 # not copied yet: listed anyway\n"
        f"{tmp_path}/data/day1/cam1b.mp4\n"
        "   # an indented comment\n"
    )
    monkeypatch.chdir(tmp_path / "data")  # relative entries follow the manifest, not the working folder
    assert is_many(f"@{manifest}")
    inputs = expand_inputs(f"@{manifest}")
    assert [i.location for i in inputs] == [tmp_path / "data/day1/cam1.mp4", tmp_path / "data/day1/cam1b.mp4", tmp_path / "data/day2/cam2.mp4"]
    assert names(inputs) == ["day1--cam1", "day1--cam1b", "day2--cam2"]  # below the common folder data/
    assert {i.kind for i in inputs} == {"video"}


def test_manifest_of_urls_names_below_their_common_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text("s3://bkt/x/day1/a.tif\ns3://bkt/x/day2/a.tif\nhttps://example.com/x/day1/b.tif\n")
    inputs = expand_inputs(f"@{manifest}")
    assert [i.location for i in inputs] == ["https://example.com/x/day1/b.tif", "s3://bkt/x/day1/a.tif", "s3://bkt/x/day2/a.tif"]
    assert all(isinstance(i.location, str) for i in inputs)
    assert {i.kind for i in inputs} == {"raster"}
    assert all(SAFE.match(n) for n in names(inputs)) and len({n.lower() for n in names(inputs)}) == 3
    same_folder = tmp_path / "same.txt"
    same_folder.write_text("s3://bkt/x/day1/a.tif\ns3://bkt/x/day2/a.tif\n")
    assert names(expand_inputs(f"@{same_folder}")) == ["day1--a", "day2--a"]


def test_manifest_duplicate_entry_is_refused_naming_it(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("clips/a.mp4\nclips/b.mp4\n./clips/../clips/a.mp4\n")
    with pytest.raises(InputError, match=r"clips/\.\./clips/a\.mp4 is listed twice \(lines 1 and 3\)"):
        expand_inputs(f"@{manifest}")


def test_manifest_listing_itself_is_refused_as_such(tmp_path: Path) -> None:
    touch(tmp_path / "clips" / "a.mp4")
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("clips/a.mp4\n./inputs.txt  # by mistake\n")
    with pytest.raises(InputError, match=r"line 2 names the manifest itself \(\./inputs\.txt\)"):
        expand_inputs(f"@{manifest}")
    (tmp_path / "link.txt").symlink_to(manifest)
    with pytest.raises(InputError, match="line 2 names the manifest itself"):
        expand_inputs(f"@{tmp_path / 'link.txt'}")  # read through a link, it is still itself


def test_missing_or_empty_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such manifest"):
        expand_inputs(f"@{tmp_path}/absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(InputError, match="lists no inputs"):
        expand_inputs(f"@{empty}")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InputError, match="text file"):
        expand_inputs(f"@{binary}")


def test_manifest_mixing_kinds_names_one_of_each(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.mp4\nb.tif\nc.tif\n")
    with pytest.raises(InputError, match=r"videos \(.*a\.mp4\) and rasters \(.*b\.tif\)"):
        expand_inputs(f"@{manifest}")


def test_manifest_line_naming_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.mp4\nclips\n")
    with pytest.raises(InputError, match="line 2 names a folder"):
        expand_inputs(f"@{manifest}")


# --- STAC ---


def stac_item(item_id: str, assets: dict[str, str]) -> pystac.Item:
    item = pystac.Item(item_id, geometry=None, bbox=None, datetime=datetime.datetime(2024, 5, 1), properties={})
    for key, href in assets.items():
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
    return item


def test_stac_item_with_a_relative_href(tmp_path: Path) -> None:
    item_json = tmp_path / "catalog" / "item.json"
    item_json.parent.mkdir()
    item_json.write_text(json.dumps(stac_item("S2A_2024-05-01", {"visual": "../data/tci.tif", "B04": "../data/b04.tif"}).to_dict(include_self_link=False)))
    assert is_many(str(item_json))
    [only] = expand_inputs(str(item_json), asset="visual")
    assert only == Input("S2A_2024-05-01", tmp_path / "data" / "tci.tif", "raster")


def test_stac_item_collection_one_input_per_item(tmp_path: Path) -> None:
    items = [
        stac_item("scene b", {"visual": "https://example.com/b/tci.tif"}),
        stac_item("scene/a", {"visual": "a/tci.tif"}),
        stac_item("_c", {"visual": "s3://bkt/c/tci.tif"}),
    ]
    collection = tmp_path / "search.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    inputs = expand_inputs(str(collection), asset="visual")
    assert [i.location for i in inputs] == [tmp_path / "a" / "tci.tif", "https://example.com/b/tci.tif", "s3://bkt/c/tci.tif"]  # sorted by location
    assert names(inputs) == ["scene_a", "scene_b", "i_c"]
    assert {i.kind for i in inputs} == {"raster"}


def test_stac_without_asset_lists_the_first_items_keys(tmp_path: Path) -> None:
    item_json = tmp_path / "item.json"
    item_json.write_text(json.dumps(stac_item("s1", {"visual": "v.tif", "B04": "b04.tif"}).to_dict(include_self_link=False)))
    with pytest.raises(InputError, match=r"--asset KEY.*item s1 has: visual, B04"):
        expand_inputs(str(item_json))


def test_stac_item_missing_the_asset_is_named(tmp_path: Path) -> None:
    items = [stac_item("s1", {"visual": "v1.tif"}), stac_item("s2", {"B04": "b04.tif", "B08": "b08.tif"})]
    collection = tmp_path / "c.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    with pytest.raises(InputError, match=r"item s2 has no asset 'visual' \(its assets: B04, B08\)"):
        expand_inputs(str(collection), asset="visual")


def test_json_that_is_not_stac_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"type": "Catalog", "id": "x"}))
    with pytest.raises(InputError, match="not a STAC Item or ItemCollection"):
        expand_inputs(str(other), asset="visual")


def test_asset_on_a_non_stac_input_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    with pytest.raises(InputError, match="--asset is for STAC inputs"):
        expand_inputs(str(tmp_path), asset="visual")
    with pytest.raises(InputError, match="--asset is for STAC inputs"):
        expand_inputs(f"{tmp_path}/*.mp4", asset="visual")


# --- names ---


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("day1--cam3", "day1--cam3"),
        ("caméra 3 (left)", "cam_ra_3__left_"),
        ("_private", "i_private"),
        (".hidden", "i.hidden"),
        ("lease", "lease_"),
        ("LEASE", "LEASE_"),
        ("zarr.json", "zarr.json_"),
        ("", "input"),
    ],
)
def test_sanitize_name(text: str, name: str) -> None:
    assert sanitize_name(text) == name


def test_long_names_are_cut_and_keep_a_hash_of_the_whole() -> None:
    a, b = sanitize_name("x" * 300 + "a"), sanitize_name("x" * 300 + "b")
    assert len(a) == 200 and a != b and SAFE.match(a)


def test_colliding_names_keep_their_suffix(tmp_path: Path) -> None:
    for rel in ("cam3.mp4", "cam3.mkv", "cam4.mp4"):
        touch(tmp_path / rel)
    assert names(expand_inputs(str(tmp_path))) == ["cam3.mkv", "cam3.mp4", "cam4"]


def test_case_insensitive_collisions_add_a_hash_of_the_location(tmp_path: Path) -> None:
    for rel in ("Cam3.mp4", "cam3.mp4", "cam4.mp4"):
        touch(tmp_path / rel)
    inputs = expand_inputs(str(tmp_path))
    assert names(inputs) == [f"Cam3.mp4-{sha8(str(tmp_path / 'Cam3.mp4'))}", f"cam3.mp4-{sha8(str(tmp_path / 'cam3.mp4'))}", "cam4"]
    assert len({n.lower() for n in names(inputs)}) == 3


def test_separator_collisions_are_resolved(tmp_path: Path) -> None:
    touch(tmp_path / "a--b.mp4")
    touch(tmp_path / "a" / "b.mp4")
    found = names(expand_inputs(str(tmp_path)))
    assert len({n.lower() for n in found}) == 2 and all(n.startswith("a--b.mp4-") for n in found)


def test_reserved_and_hidden_looking_names(tmp_path: Path) -> None:
    for rel in ("lease.mp4", "_segbatch.mp4", "zarr.json.mp4"):
        touch(tmp_path / rel)
    assert names(expand_inputs(str(tmp_path))) == ["i_segbatch", "lease_", "zarr.json_"]


def test_names_depend_on_the_set_not_the_order(tmp_path: Path) -> None:
    entries = ["s3://bkt/d1/cam.mp4", "s3://bkt/d2/cam.mp4", "s3://bkt/d2/cam.mkv", "s3://bkt/d1/Cam.mp4"]
    forward, backward = tmp_path / "f.txt", tmp_path / "b.txt"
    forward.write_text("\n".join(entries))
    backward.write_text("\n".join(reversed(entries)))
    first = expand_inputs(f"@{forward}")
    assert first == expand_inputs(f"@{backward}") == expand_inputs(f"@{forward}")
    assert len({n.lower() for n in names(first)}) == 4 and all(SAFE.match(n) for n in names(first))
    assert dict(zip([i.location for i in first], names(first)))["s3://bkt/d2/cam.mkv"] == "d2--cam.mkv"


def test_importing_the_module_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, segbatch.inputs; print(' '.join(sorted(m for m in ('numpy', 'rasterio', 'pystac', 'av', 'torch') if m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""
