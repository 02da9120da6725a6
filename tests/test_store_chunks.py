"""write_region and read_chunk code whole chunks themselves (segbatch.store): the bytes Zarr writes, the values Zarr reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from segbatch.store import FILL_DIGEST, OpenArrays, array_codecs, chunk_digests, chunk_region, digest, drop_chunk, is_local, read_chunk, write_region

# (dtype, shape, chunks, scratch, fill): labels, float maps of a video (an edge chunk in time and space), a raster's tiles
CASES = [
    ("uint8", (20, 30, 44), (8, 30, 44), False, 255),
    ("float16", (20, 30, 44), (8, 16, 32), False, float("nan")),
    ("float32", (50, 70), (24, 24), False, float("nan")),
    ("uint8", (3, 5, 40, 40), (1, 5, 40, 40), True, 255),
]


def _array(group: zarr.Group, dtype: str, shape: tuple[int, ...], chunks: tuple[int, ...], scratch: bool, fill: float) -> zarr.Array:
    return group.create_array("a", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, **array_codecs(dtype, scratch))


def _values(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return np.cumsum(rng.normal(size=shape), axis=-1).astype(dtype)  # smooth, as a map is: it compresses
    return rng.integers(0, 12, size=shape).astype(dtype)


@pytest.mark.parametrize("side_by_side", [True, False], ids=["threads", "in-caller"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[2]))}{'-scratch' if c[3] else ''}")
def test_chunks_written_by_write_region_are_byte_for_byte_zarrs(tmp_path: Path, case, side_by_side):
    dtype, shape, chunks, scratch, fill = case
    ours, theirs = (_array(zarr.open_group(tmp_path / name, mode="w"), *case) for name in ("ours.zarr", "theirs.zarr"))
    values = _values(dtype, shape)
    region = tuple(slice(0, n) for n in shape)
    digests = write_region({"a": ours}, region, {"a": values}, side_by_side=side_by_side)
    theirs[...] = values
    files = {p.relative_to(tmp_path / "theirs.zarr") for p in (tmp_path / "theirs.zarr").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "ours.zarr") for p in (tmp_path / "ours.zarr").rglob("*") if p.is_file()}
    chunk_files = [f for f in files if f.parts[:2] == ("a", "c")]
    assert len(chunk_files) == len(digests) > 1  # every chunk a file of its own, edge chunks included
    for f in chunk_files:
        assert (tmp_path / "ours.zarr" / f).read_bytes() == (tmp_path / "theirs.zarr" / f).read_bytes(), f
    np.testing.assert_array_equal(ours[...], values)
    assert digests == chunk_digests(ours, region, ours[...])


def test_a_fill_chunk_among_a_units_goes_through_zarr_which_deletes_an_earlier_one(tmp_path: Path):
    arr = _array(zarr.open_group(tmp_path / "s.zarr", mode="w"), "float16", (16, 8, 8), (8, 8, 8), False, float("nan"))
    write_region({"a": arr}, (slice(0, 16),), {"a": _values("float16", (16, 8, 8))})
    assert (tmp_path / "s.zarr" / "a" / "c" / "1" / "0" / "0").is_file()
    again = _values("float16", (16, 8, 8), seed=1)
    again[8:] = np.nan  # an attempt whose second chunk is all fill
    digests = write_region({"a": arr}, (slice(0, 16),), {"a": again})
    assert digests["a/1.0.0"] == FILL_DIGEST and not (tmp_path / "s.zarr" / "a" / "c" / "1" / "0" / "0").exists()
    np.testing.assert_array_equal(arr[...], again)


def _elsewhere(tmp_path: Path) -> tuple[zarr.Array, zarr.Array]:
    """An array in a store that is not a local folder, and a sharded one: each coded through Zarr's store or Zarr itself."""
    from zarr.storage import MemoryStore

    memory = _array(zarr.open_group(MemoryStore(), mode="w"), "float16", (16, 8, 8), (8, 8, 8), False, float("nan"))
    sharded = zarr.open_group(tmp_path / "s.zarr", mode="w").create_array(
        "a", shape=(16, 8, 8), chunks=(4, 8, 8), shards=(8, 8, 8), dtype="float16", fill_value=float("nan")
    )
    return memory, sharded


def test_arrays_in_other_stores_and_sharded_ones_are_written_too(tmp_path: Path):
    values = _values("float16", (16, 8, 8))
    memory, sharded = _elsewhere(tmp_path)
    assert not is_local(zarr.open_group(memory.store)) and is_local(zarr.open_group(tmp_path / "s.zarr"))
    for arr, side_by_side in ((memory, True), (sharded, False)):
        digests = write_region({"a": arr}, (slice(0, 16),), {"a": values}, side_by_side=side_by_side)
        np.testing.assert_array_equal(arr[...], values)
        assert digests["a/0.0.0"] == digest(values[: arr.chunks[0]], arr.fill_value) != FILL_DIGEST


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[2]))}{'-scratch' if c[3] else ''}")
def test_read_chunk_gives_what_zarr_reads(tmp_path: Path, case):
    dtype, shape = case[:2]
    arr = _array(zarr.open_group(tmp_path / "s.zarr", mode="w"), *case)
    values = _values(dtype, shape)
    arr[...] = values
    first = tuple(0 for _ in shape)
    last = tuple((n - 1) // c for n, c in zip(shape, arr.chunks))  # an edge chunk where the shape is not a multiple
    for idx in (first, last):
        np.testing.assert_array_equal(read_chunk(arr, idx), values[chunk_region(arr, idx)])
    arr[chunk_region(arr, last)] = arr.fill_value  # zarr deletes a chunk written as fill: it reads as fill
    assert not (tmp_path / "s.zarr" / "a" / "c" / "/".join(map(str, last))).exists()
    np.testing.assert_array_equal(read_chunk(arr, last), arr[chunk_region(arr, last)])


def test_read_chunk_reads_other_stores_and_sharded_arrays(tmp_path: Path):
    values = _values("float16", (16, 8, 8))
    for arr in _elsewhere(tmp_path):
        arr[...] = values
        np.testing.assert_array_equal(read_chunk(arr, (1, 0, 0)), values[chunk_region(arr, (1, 0, 0))])


def test_drop_chunk_deletes_that_chunk_alone_which_then_reads_as_fill(tmp_path: Path):
    from zarr.core.sync import sync

    arr = _array(zarr.open_group(tmp_path / "s.zarr", mode="w"), *CASES[3])  # a raster's tiles/: one chunk per tile
    values = _values("uint8", arr.shape)
    arr[...] = values
    drop_chunk(arr, (1, 0, 0, 0))
    drop_chunk(arr, (1, 0, 0, 0))  # gone already: no error
    chunks = tmp_path / "s.zarr" / "a" / "c"
    assert sorted(str(p.relative_to(chunks)) for p in chunks.rglob("*") if p.is_file()) == ["0/0/0/0", "2/0/0/0"]
    values[1] = arr.fill_value
    np.testing.assert_array_equal(arr[...], values)
    for other in _elsewhere(tmp_path / "other"):
        kept = _values("float16", (16, 8, 8))
        other[...] = kept
        drop_chunk(other, (1, 0, 0))
        kept[chunk_region(other, (1, 0, 0))] = np.nan
        np.testing.assert_array_equal(other[...], kept)
    memory = _elsewhere(tmp_path / "memory")[0]
    memory[...] = 1
    drop_chunk(memory, (0, 0, 0))
    assert not sync(memory.store.exists("a/c/0/0/0")) and sync(memory.store.exists("a/c/1/0/0"))


def test_open_arrays_opens_each_array_once_and_answers_in_for_those_not_opened_yet(tmp_path: Path):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    _array(group, *CASES[0])
    arrays = OpenArrays(group)
    assert "a" in arrays and "b" not in arrays and not dict(arrays)  # asked the store, opened nothing
    assert arrays["a"] is arrays["a"] and list(dict(arrays)) == ["a"]


def test_a_ledger_entry_is_stored_as_zarr_stores_it_and_read_back(tmp_path: Path):
    from segbatch.store import ledger_array, record_unit, unit_entry

    stores = []
    for name in ("ours.zarr", "theirs.zarr"):  # the ledger as create_store makes it: a JSON string per unit, a chunk each
        root = zarr.open_group(tmp_path / name, mode="w")
        root.create_group("_segbatch").create_array("ledger", shape=(3,), chunks=(1,), dtype=str, fill_value="")
        stores.append(root)
    entry = {"unit": 1, "chunks": {"labels/1.0.0": "blake3-128:00"}, "note": "é"}
    record_unit(stores[0], 1, entry)
    ledger_array(stores[1])[1] = json.dumps(entry, sort_keys=True)
    key = Path("_segbatch") / "ledger" / "c" / "1"
    assert (tmp_path / "ours.zarr" / key).read_bytes() == (tmp_path / "theirs.zarr" / key).read_bytes()
    assert json.loads(unit_entry(stores[0], 1)) == entry == json.loads(str(ledger_array(stores[0])[1]))
    assert unit_entry(stores[0], 2) == ""  # never written: the fill


def test_a_ledger_whose_entries_share_a_chunk_is_written_and_read_through_zarr(tmp_path: Path):
    from segbatch.store import record_unit, unit_entry

    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    root.create_group("_segbatch").create_array("ledger", shape=(3,), chunks=(3,), dtype=str, fill_value="")
    record_unit(root, 0, {"unit": 0})
    record_unit(root, 2, {"unit": 2})  # the chunk holds both: writing it whole would lose entry 0
    assert [unit_entry(root, u) for u in range(3)] == ['{"unit": 0}', "", '{"unit": 2}']
