"""write_region encodes and stores whole chunks itself (segbatch.store._put_chunk): the bytes must be the ones Zarr writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from segbatch.store import FILL_DIGEST, array_codecs, chunk_digests, digest, write_region

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


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[2]))}{'-scratch' if c[3] else ''}")
def test_chunks_written_by_write_region_are_byte_for_byte_zarrs(tmp_path: Path, case):
    dtype, shape, chunks, scratch, fill = case
    ours, theirs = (_array(zarr.open_group(tmp_path / name, mode="w"), *case) for name in ("ours.zarr", "theirs.zarr"))
    values = _values(dtype, shape)
    region = tuple(slice(0, n) for n in shape)
    digests = write_region({"a": ours}, region, {"a": values})
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


def test_arrays_in_other_stores_and_sharded_ones_are_written_too(tmp_path: Path):
    from zarr.storage import MemoryStore

    memory = _array(zarr.open_group(MemoryStore(), mode="w"), "float16", (16, 8, 8), (8, 8, 8), False, float("nan"))
    sharded = zarr.open_group(tmp_path / "s.zarr", mode="w").create_array(
        "a", shape=(16, 8, 8), chunks=(4, 8, 8), shards=(8, 8, 8), dtype="float16", fill_value=float("nan")
    )
    values = _values("float16", (16, 8, 8))
    for arr in (memory, sharded):
        digests = write_region({"a": arr}, (slice(0, 16),), {"a": values})
        np.testing.assert_array_equal(arr[...], values)
        assert digests["a/0.0.0"] == digest(values[: arr.chunks[0]], arr.fill_value) != FILL_DIGEST
