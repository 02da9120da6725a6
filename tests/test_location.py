"""One notion of "the same place" (DESIGN.md rule 7): every spelling of a location a user may type names the same place."""

import os

import pytest

from segbatch import location


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """tmp/home/data/store.zarr/tiny.pt, a symlink tmp/link -> tmp/home/data, HOME = tmp/home, the working folder tmp/home."""
    home = tmp_path / "home"
    store = home / "data" / "store.zarr"
    store.mkdir(parents=True)
    (store / "tiny.pt").write_bytes(b"x")
    (tmp_path / "link").symlink_to(home / "data")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return tmp_path, store


def spellings(tmp_path, store):
    """Every way of writing the store's folder: plain, relative, ~, .., symlink, trailing slash, file:// URLs."""
    return {
        "plain": store,
        "plain text": str(store),
        "relative": "data/store.zarr",
        "dot": "./data/./store.zarr",
        "home": "~/data/store.zarr",
        "dotdot": f"{tmp_path}/home/data/../data/store.zarr",
        "symlink": tmp_path / "link" / "store.zarr",
        "trailing slash": f"{store}/",
        "file url": f"file://{store}",
        "file url trailing slash": f"file://{store}/",
        "file url dotdot": f"file://{tmp_path}/home/data/../data/store.zarr",
        "file url symlink": f"file://{tmp_path}/link/store.zarr",
    }


SPELLINGS = [
    "plain",
    "plain text",
    "relative",
    "dot",
    "home",
    "dotdot",
    "symlink",
    "trailing slash",
    "file url",
    "file url trailing slash",
    "file url dotdot",
    "file url symlink",
]


@pytest.mark.parametrize("a", SPELLINGS)
@pytest.mark.parametrize("b", SPELLINGS)
def test_every_spelling_of_a_folder_is_the_same_place_and_holds_the_same_files(tree, a, b):
    tmp_path, store = tree
    ways = spellings(tmp_path, store)
    assert location.same(ways[a], ways[b])
    inner = str(ways[b]).rstrip("/") + "/tiny.pt"
    assert location.inside(inner, ways[a])
    assert not location.inside(ways[a], inner)


def test_a_sibling_with_a_common_prefix_is_not_inside(tree):
    tmp_path, store = tree
    assert not location.inside(f"{store}-old/tiny.pt", store)
    assert not location.inside(f"file://{store}.bak", store)
    assert not location.same(store, store.parent)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://bucket/jobs/x.zarr", "s3a://bucket/jobs/x.zarr/"),
        ("s3://bucket/jobs/x.zarr", "s3n://bucket//jobs/./x.zarr"),
        ("s3://bucket/jobs/x.zarr", "S3://bucket/jobs/old/../x.zarr"),
        ("gs://bucket/x.zarr", "gcs://bucket/x.zarr/"),
        ("az://container/x.zarr", "abfs://container/x.zarr"),
        ("https://Example.org/a/b.tif", "https://example.org/a/./b.tif"),
    ],
)
def test_object_store_spellings_are_the_same_place(a, b):
    assert location.same(a, b)
    assert location.inside(f"{b.rstrip('/')}/tiny.pt", a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://bucket/x.zarr", "s3://other/x.zarr"),  # another bucket
        ("s3://bucket/x.zarr", "gs://bucket/x.zarr"),  # another service
        ("s3://bucket/x.zarr", "s3://bucket/X.zarr"),  # keys are case-sensitive
        ("s3://bucket/x.zarr", "/bucket/x.zarr"),  # a local path is not an object
    ],
)
def test_different_objects_are_different_places(a, b):
    assert not location.same(a, b)
    assert not location.inside(b, a)


def test_a_path_not_made_yet_still_resolves_through_its_existing_parents(tree):
    tmp_path, store = tree
    assert location.same(tmp_path / "link" / "store.zarr" / "new" / "x.tif", f"file://{store}/new/x.tif")
    assert os.path.realpath(location.place("~/data/store.zarr")) == str(store)


def test_workers_get_the_drivers_storage_variables_and_nothing_else(monkeypatch):
    for name in list(os.environ):
        if name.startswith(location.STORAGE_VARIABLES):
            monkeypatch.delenv(name)
    assert location.storage_variables() == {}  # none: the nodes' own credentials (instance roles) stay in charge
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "3")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "t")
    monkeypatch.setenv("NOT_AWS_KEY", "x")
    variables = location.storage_variables()
    assert variables == {"AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://minio:9000", "GDAL_HTTP_MAX_RETRY": "3", "AZURE_STORAGE_SAS_TOKEN": "t"}
