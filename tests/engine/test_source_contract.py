"""The source interface, checked directly and fast (no Ray): one contract every source subclasses, as zarr tests each store class.

`SourceContract` holds the checks; each source's subclass makes a small input
(`cfg`), names the items its reads account for without reading them
(`UNREAD`) and the settings that change the output's bits (`BIT_SETTINGS`).
The contract: units cover every item exactly once; a unit's items and batches
depend on the unit alone; placers write chunks no other write touches (whole
chunks, clipped at the array's end); the source's fingerprint changes with
every setting that changes the bits, and with nothing else. The end-to-end
promises (same bits with 1 or N actors, resume, ...) are tests/engine/test_sources.py's.
"""

from __future__ import annotations

import itertools
import pickle
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import rasterio
import torch

from segbatch.batching import batched
from segbatch.engine.groups import model_fingerprint
from segbatch.engine.images import ImageSource
from segbatch.engine.job import RunConfig
from segbatch.engine.raster import RasterSource
from segbatch.engine.source import Item, UnitReport
from segbatch.engine.video import VideoSource
from segbatch.model.checkpoint import load_checkpoint
from segbatch.store import create_store
from tests.helpers.folders import write_many
from tests.helpers.rasters import write_geotiff
from tests.helpers.videos import frame_index, write_video

Setting = tuple[str, dict[str, Any]]  # (test id, RunConfig fields to change)

# settings that never reach the output's bits, whatever the source: how many actors, where Ray is, what is printed, what is kept, how the store is opened
COMMON_SAME_BITS: list[Setting] = [
    ("actors", {"actors": 3}),
    ("cpus_per_actor", {"cpus_per_actor": 2.0}),
    ("gpus_per_actor", {"gpus_per_actor": 0.5}),
    ("quiet", {"quiet": True}),
    ("verbose", {"verbose": 2}),
    ("progress", {"progress": "json"}),
    ("address", {"address": "ray://head:10001"}),
    ("keep_tiles", {"keep_tiles": True}),
    ("resume", {"resume": True}),
    ("overwrite", {"overwrite": True}),
    ("out", {"out": "/elsewhere/other.zarr"}),
]
# the model step's settings: the run's model fingerprint holds them (segbatch.engine.groups.model_fingerprint), never the source's
MODEL_SETTINGS: list[Setting] = [
    ("samples", {"samples": 4}),  # both > 0: the same arrays (0 would drop uncertainty, a change of the source's outputs)
    ("seed", {"seed": 7}),
    ("precision", {"precision": "bf16"}),
    ("float_dtype", {"float_dtype": "float32"}),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`bit_setting`, `same_setting` and `model_setting` take each of the class's settings in turn."""
    for name, cases in (
        ("bit_setting", getattr(metafunc.cls, "BIT_SETTINGS", [])),
        ("same_setting", COMMON_SAME_BITS + getattr(metafunc.cls, "SAME_BITS", [])),
        ("model_setting", MODEL_SETTINGS),
    ):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, [c[1] for c in cases], ids=[c[0] for c in cases])


@pytest.fixture(scope="module")
def ckpt(tiny_model):
    return load_checkpoint(tiny_model)


def read_unit(job: Any, unit: Any) -> tuple[list[Item], UnitReport]:
    report = UnitReport()
    return list(job.read(unit, report)), report


def assert_same_items(a: list[Item], b: list[Item], unit: Any) -> None:
    assert [i.index for i in a] == [i.index for i in b], unit
    for x, y in zip(a, b):
        assert x.data.dtype == y.data.dtype and np.array_equal(x.data, y.data), f"{unit}: item {x.index} read other bytes"
        if isinstance(x.info, np.ndarray):
            assert np.array_equal(x.info, y.info), f"{unit}: item {x.index} has another info"
        else:
            assert x.info == y.info, f"{unit}: item {x.index} has another info"


def fake_outputs(job: Any, items: list[Item], outputs: tuple[str, ...], float_dtype: str, k: int) -> dict[str, np.ndarray]:
    """What the pipeline hands the placer for a batch: the model step's arrays (segbatch.mc.predict_outputs: labels uint8
    (B, H, W), each of `outputs` in `float_dtype`, per pixel (B, H, W) or probs channel-last (B, H, W, K); (H, W) is the
    batch's as the model sees it) through the source's `from_model`."""
    b, _, h, w = job.to_model(torch.from_numpy(np.stack([i.data for i in items]))).shape
    rng = np.random.default_rng(items[0].index)
    out = {"labels": rng.integers(0, k, (b, h, w), dtype=np.uint8)}
    for name in outputs:
        if name == "probs":
            p = rng.random((b, h, w, k))
            out[name] = (p / p.sum(-1, keepdims=True)).astype(float_dtype)
        else:
            out[name] = rng.random((b, h, w)).astype(float_dtype)
    return {name: value.numpy() for name, value in job.from_model({n: torch.from_numpy(v) for n, v in out.items()}).items()}


def chunks_of(region: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The chunk indices `region` touches."""
    return list(itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(region, chunks))))


def full(region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """`region` with every axis explicit (a write may leave trailing axes whole)."""
    region = tuple(region) + (slice(None),) * (len(shape) - len(region))
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))


class SourceContract:
    """What every source promises the engine; not collected itself (its name does not start with Test), only through subclasses."""

    SOURCE: ClassVar[type]
    ACTORS: ClassVar[int] = 1  # the store is laid out for this many actors
    BATCH_SIZE: ClassVar[int] = 1  # the step's batch size with the class's options
    UNREAD: ClassVar[frozenset[int]] = frozenset()  # items of the input a read accounts for without reading them (all-nodata tiles, ...)
    BIT_SETTINGS: ClassVar[list[Setting]]
    SAME_BITS: ClassVar[list[Setting]] = []  # besides COMMON_SAME_BITS

    @pytest.fixture(scope="class")
    @classmethod
    def cfg(cls, tmp_path_factory) -> RunConfig:
        """The options of a run of a small input of this kind (its store is never made)."""
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def other_input(cls, tmp_path_factory) -> Path:
        """Another input of this kind, of the same size on the item axis, with other content."""
        raise NotImplementedError

    def all_items(self, source: Any) -> list[int]:
        """The item indices of the input."""
        raise NotImplementedError

    def accounted(self, unit: Any, report: UnitReport) -> list[int]:
        """Items of `unit` its report accounts for without reading them: frames the decoder lost, unreadable images."""
        return [*report.missing, *(u["image"] for u in report.unreadable)]

    def expected_chunks(self, arrays: dict[str, Any], units: list[Any], reports: list[UnitReport]) -> set[tuple[str, tuple[int, ...]]]:
        """The chunks the placers of all units write: every chunk of every array the workers write."""
        return {(name, idx) for name, arr in arrays.items() for idx in chunks_of(full((), arr.shape), arr.chunks)}

    @staticmethod
    def written(layout: Any) -> set[str]:
        """The arrays the workers write (the others are the driver's: coordinates, or a raster's stitched outputs)."""
        return set(layout.outputs)

    def check_region(self, source: Any, name: str, region: tuple[slice, ...], arr: Any) -> None:
        """A write covers whole chunks: every side starts on the chunk grid and ends on it or at the array's end."""
        for axis, (s, c, n) in enumerate(zip(region, arr.chunks, arr.shape)):
            assert s.start % c == 0 and (s.stop % c == 0 or s.stop == n), f"{name} axis {axis}: {s.start}:{s.stop} is not whole chunks of {c} (of {n})"

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, cfg, ckpt) -> Any:
        return cls.SOURCE(cfg, ckpt)

    @pytest.fixture(scope="class")
    @classmethod
    def planned(cls, source) -> tuple[Any, dict[str, Any], list[Any]]:
        layout, attrs = source.new_store(cls.ACTORS)
        return layout, attrs, list(source.units(attrs))

    @pytest.fixture(scope="class")
    @classmethod
    def reads(cls, source, planned) -> list[tuple[list[Item], UnitReport]]:
        """Each unit read once, in order, by one job."""
        job = source.job("unused.zarr")
        return [read_unit(job, unit) for unit in planned[2]]

    @pytest.fixture(scope="class")
    @classmethod
    def arrays(cls, planned, tmp_path_factory) -> dict[str, Any]:
        """The store's arrays as the layout makes them: their shapes and chunk grids are what the writes must fit."""
        layout, attrs, _ = planned
        root = create_store(tmp_path_factory.mktemp("contract") / "store.zarr", layout, attrs)
        return {name: root[name] for name in cls.written(layout)}

    def test_units_cover_every_item_exactly_once(self, source, planned, reads):
        layout, _, units = planned
        assert sorted(u.id for u in units) == list(range(len(units)))  # a unit's id is its row in the ledger
        assert layout.units == len(units) <= source.max_units
        read, unread = [], []
        for unit, (items, report) in zip(units, reads):
            accounted = self.accounted(unit, report)
            assert source.size(unit) == len(items) + len(accounted), source.describe(unit)
            read += [i.index for i in items]
            unread += accounted
        assert sorted(read + unread) == self.all_items(source)  # each item once: read, or accounted for
        assert set(unread) == self.UNREAD

    def test_a_units_items_and_batches_depend_on_the_unit_only(self, source, planned, reads):
        _, _, units = planned
        step = source.step("model.pt")
        assert step.batch_size == self.BATCH_SIZE
        job = pickle.loads(pickle.dumps(source.job("unused.zarr")))  # as an actor gets it
        for unit, (first, report) in zip(reversed(units), reversed(reads)):  # the last unit read first, the first after all others
            for _ in range(2):
                again, report_again = read_unit(job, unit)
                assert_same_items(again, first, unit)
                assert asdict(report_again) == asdict(report)
                batches = list(batched(iter(again), step.batch_size))
                assert [[i.index for i in b] for b in batches] == [[i.index for i in b] for b in batched(iter(first), step.batch_size)]
                assert all(len(b) == step.batch_size for b in batches[:-1])
                for b in batches:  # the worker stacks a batch: its items have one shape
                    assert len({i.data.shape for i in b}) == 1, f"{unit}: a batch of items of different shapes"

    def test_placers_write_chunks_no_other_write_touches(self, source, planned, reads, arrays, ckpt):
        _, _, units = planned
        step = source.step("model.pt")
        job = source.job("unused.zarr")
        k = ckpt.spec.num_classes
        writer: dict[tuple[str, tuple[int, ...]], int] = {}  # (array, chunk) -> the unit that wrote it
        for unit, (items, _) in zip(units, reads):
            placer = job.placer(unit, k)
            writes = [w for b in batched(iter(items), step.batch_size) for w in placer.put(b, fake_outputs(job, b, step.outputs, step.float_dtype, k))]
            writes += placer.close()
            for w in writes:
                for name, values in w.arrays.items():
                    arr = arrays[name]
                    region = full(w.region, arr.shape)
                    assert all(0 <= s.start < s.stop <= n for s, n in zip(region, arr.shape)), f"{name}: {region} is outside {arr.shape}"
                    assert values.shape == tuple(s.stop - s.start for s in region), f"{name}: {values.shape} does not fill {region}"
                    self.check_region(source, name, region, arr)
                    for idx in chunks_of(region, arr.chunks):
                        assert (name, idx) not in writer, f"{name} chunk {idx}: written by unit {writer.get((name, idx))} and again by unit {unit.id}"
                        writer[(name, idx)] = unit.id
        assert set(writer) == self.expected_chunks(arrays, units, [r for _, r in reads])

    def test_fingerprint_changes_with_each_setting_that_changes_the_bits(self, cfg, ckpt, source, bit_setting):
        assert self.SOURCE(replace(cfg, **bit_setting), ckpt).fingerprint() != source.fingerprint()

    def test_fingerprint_changes_with_the_input(self, cfg, ckpt, source, other_input):
        assert self.SOURCE(replace(cfg, input=other_input), ckpt).fingerprint() != source.fingerprint()

    def test_fingerprint_and_the_workers_are_the_same_for_a_setting_that_does_not_change_the_bits(self, cfg, ckpt, source, same_setting):
        changed = self.SOURCE(replace(cfg, **same_setting), ckpt)
        assert changed.fingerprint() == source.fingerprint()
        # nor does it reach what the workers get (the step's thread count is the node's, not the bits')
        assert pickle.dumps(changed.job("s.zarr")) == pickle.dumps(source.job("s.zarr"))
        assert replace(changed.step("m.pt"), threads=1) == replace(source.step("m.pt"), threads=1)

    def test_model_settings_are_in_the_model_fingerprint_not_the_sources(self, cfg, ckpt, source, model_setting):
        changed = replace(cfg, **model_setting)
        assert self.SOURCE(changed, ckpt).fingerprint() == source.fingerprint()
        assert model_fingerprint(changed, ckpt.sha256) != model_fingerprint(cfg, ckpt.sha256)


class TestVideoSource(SourceContract):
    SOURCE = VideoSource
    BATCH_SIZE = 3  # not a divisor of the 8-frame chunk: batches cross chunks
    BIT_SETTINGS: ClassVar[list[Setting]] = [
        ("frames", {"frames": (3, 40)}),
        ("batch_size", {"batch_size": 4}),
        ("resize", {"resize": (32, 48)}),
        ("outputs", {"extra_outputs": ("probs",)}),
        ("hwaccel", {"hwaccel": "cuda"}),
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def cfg(cls, tmp_path_factory) -> RunConfig:
        """48 frames of 48x64 (chunks of 8 frames), frames 3:46 of them: 6 units, the last one short."""
        video = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 48, gop=12)
        return RunConfig(input=str(video), out="unused.zarr", samples=2, batch_size=3, frames=(3, 46))

    @pytest.fixture(scope="class")
    @classmethod
    def other_input(cls, tmp_path_factory) -> Path:
        return write_video(tmp_path_factory.mktemp("video") / "other.mp4", 48, gop=6)

    def all_items(self, source: Any) -> list[int]:
        return list(range(3, 46))

    def test_an_item_is_the_frame_its_index_names(self, planned, reads):
        assert len(planned[2]) == 6
        for items, report in reads:
            assert not report.missing and not report.damaged
            assert [frame_index(i.data) for i in items] == [i.index for i in items]


class TestRasterSource(SourceContract):
    SOURCE = RasterSource
    UNREAD = frozenset({0})  # tile 0's whole window is nodata: read as nothing, reported skipped
    BIT_SETTINGS: ClassVar[list[Setting]] = [
        ("bands", {"bands": (3, 2, 1)}),
        ("tile", {"tile": 64}),
        ("overlap", {"overlap": 4}),
    ]
    SAME_BITS: ClassVar[list[Setting]] = [("bands spelled out", {"bands": (1, 2, 3)})]

    @pytest.fixture(scope="class")
    @classmethod
    def cfg(cls, tmp_path_factory) -> RunConfig:
        """96x128, tiles of 48 with a margin of 8 (cores of 32): 3x4 tiles; nodata over tile 0's whole window (rows and columns 0:48)."""
        raster = write_geotiff(tmp_path_factory.mktemp("raster") / "scene.tif", height=96, width=128)
        with rasterio.open(raster, "r+") as ds:
            data = ds.read()
            data[:, :48, :48] = 0
            ds.write(data)
        return RunConfig(input=str(raster), out="unused.zarr", samples=2, tile=48, overlap=8)

    @pytest.fixture(scope="class")
    @classmethod
    def other_input(cls, tmp_path_factory) -> Path:
        return write_geotiff(tmp_path_factory.mktemp("raster") / "other.tif", height=96, width=128, seed=1)

    def all_items(self, source: Any) -> list[int]:
        return list(range(12))

    def accounted(self, unit: Any, report: UnitReport) -> list[int]:
        return [unit.id] if report.skipped else []

    @staticmethod
    def written(layout: Any) -> set[str]:
        return {spec.name for spec in layout.extra}  # tiles/: the workers' (the outputs are the stitcher's)

    def expected_chunks(self, arrays: dict[str, Any], units: list[Any], reports: list[UnitReport]) -> set[tuple[str, tuple[int, ...]]]:
        """Each tile read writes its own chunk of each tiles/ array; a skipped one writes nothing (its chunks stay fill)."""
        done = [u.id for u, r in zip(units, reports) if not r.skipped]
        return {(name, (t,) + (0,) * (arr.ndim - 1)) for name, arr in arrays.items() for t in done}


class TestImageSource(SourceContract):
    SOURCE = ImageSource
    BIT_SETTINGS: ClassVar[list[Setting]] = [
        ("resize", {"resize": (32, 32)}),
        ("outputs", {"extra_outputs": ("mutual_information",)}),
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def cfg(cls, tmp_path_factory) -> RunConfig:
        """16 PNGs of 40-96 pixels a side: 8 units of 2 images for 1 actor; one chunk per image row."""
        folder = write_many(tmp_path_factory.mktemp("images") / "many", 16)
        return RunConfig(input=str(folder), out="unused.zarr", samples=2)

    @pytest.fixture(scope="class")
    @classmethod
    def other_input(cls, tmp_path_factory) -> Path:
        return write_many(tmp_path_factory.mktemp("images") / "many", 16, seed=1)

    def all_items(self, source: Any) -> list[int]:
        return list(range(16))

    def check_region(self, source: Any, name: str, region: tuple[slice, ...], arr: Any) -> None:
        """Images are padded to the largest: a write covers its image's rows and columns of its own chunks; the rest is padding
        (fill, never written by anyone), so the chunk still has one writer."""
        image, y, x = region
        height, width, _ = source.plan.shapes[image.start]
        assert image.stop - image.start == 1 and arr.chunks[0] == 1
        assert (y.start, y.stop, x.start, x.stop) == (0, height, 0, width), f"{name}: {region} is not image {image.start}'s {height}x{width}"
