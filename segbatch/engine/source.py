"""The one protocol every input kind plugs into the engine with: video, raster tiles, image folders (later more).

A source has two halves. The driver half (`Source`) plans: it checks the
input, names the settings that decide the output's bits, lays out the store,
cuts the work into units and, at the end, finishes the store (finalise, or
stitch). The worker half (`SourceJob`, sent once to each actor) reads a
unit's items and places the model's outputs in the store; the model step's
settings (`ModelStep`) are the run's, not the source's.
Everything else is the engine's, written once: the run prologue, the
elastic pool, the worker pipeline (read-ahead, device, copy back, writer),
fencing, digests and the ledger.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from segbatch.store import StoreLayout

if TYPE_CHECKING:
    from zarr import Group

    from segbatch.engine.outcome import RunSummary
    from segbatch.engine.step import ModelStep
    from segbatch.owner import Owner

UNITS_PER_ACTOR = 8  # sources cut units so each actor gets at least this many: no actor idles long at the end


@dataclass(frozen=True)
class Item:
    """One thing the model sees: a frame, a tile, an image."""

    index: int  # its index in the source (frame, tile or image number): its dropout seed is (run seed, index)
    data: np.ndarray  # the model input as the job's `to_model` takes it (stacked with the batch's other items)
    info: Any = None  # what placing its outputs needs (a tile's valid mask, an image's size, ...)


@dataclass(frozen=True)
class Write:
    """A region of the store the unit owns, and the arrays that fill it (whole chunks: one writer per chunk)."""

    region: tuple[slice, ...]
    arrays: Mapping[str, np.ndarray]
    digests: bool = True  # recorded in the ledger for `segbatch verify` (not for scratch arrays such as tiles/)


@dataclass
class UnitReport:
    """What a worker learned about a unit's input while reading it (decoder errors, unreadable images, ...)."""

    missing: list[int] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False


class Unit(Protocol):
    """A piece of work an actor runs alone: its `id` is its row in its store's ledger (frames, images, a tile: the source's)."""

    @property
    def id(self) -> int: ...


U = TypeVar("U", bound=Unit)  # a source's own unit type (FrameUnit, TileUnit, ImageUnit)
U_in = TypeVar("U_in", bound=Unit, contravariant=True)  # the same, where the worker half only takes units


class Placer(Protocol):
    """A unit's outputs on their way into the store: buffers them into whole chunks (one per unit, worker side)."""

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        """Take a batch's outputs (row i is items[i]); return the writes that are now whole."""
        ...

    def close(self) -> list[Write]:
        """The unit is read: the rest of its chunks (fill values where nothing arrived)."""
        ...


class SourceJob(Protocol[U_in]):
    """The worker half of a source: facts about one input and its store, picklable, sent once to each actor that needs it.

    The model step's settings are not here: they are the run's (`ModelStep`).
    """

    @property
    def store(self) -> str:
        """The store (or a job's group) the input's units write into."""
        ...

    def check_node(self) -> None:
        """Before an actor's first unit of this input: its node can read the input (and decode it as asked)."""
        ...

    def read(self, unit: U_in, report: UnitReport) -> Generator[Item, None, None]:
        """The unit's items in order (the model step batches them: `ModelStep.batch_size`): they depend on the unit only.

        A generator: the pipeline closes it however the unit ends (what it holds open is let go, or passed on, at once)."""
        ...

    def to_model(self, x: Any) -> Any:
        """A stacked batch on the model's device -> (B, C, H, W) float in [0, 1]."""
        ...

    def from_model(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The model step's arrays, still on the device -> what is copied back for the placer (the least bytes it needs)."""
        ...

    def placer(self, unit: U_in, num_classes: int) -> Placer:
        """Where a unit's outputs go."""
        ...

    def unit_stats(self, unit: U_in, report: UnitReport) -> dict[str, Any]:
        """The unit's ledger entry (besides run, node, digests and stage times, which the engine adds)."""
        ...


class Source(Protocol[U]):
    """The driver half of a source."""

    kind: str  # video | raster | images: its entry in segbatch.kinds
    noun: str  # what an item is called in messages: frame, tile, image
    max_units: int  # the most units the input can be cut into (the pool is never larger)

    def fingerprint(self) -> dict[str, Any]:
        """The source's part of the settings that decide the output's bits (identity, ranges, sizes)."""
        ...

    def new_store(self, actors: int) -> tuple[StoreLayout, dict[str, Any]]:
        """The store's layout and the source's root attributes (`source`, unit size, ...), for a new run."""
        ...

    def units(self, attrs: Mapping[str, Any]) -> Sequence[U]:
        """The units, from the store's attributes (the unit size is fixed when the store is made)."""
        ...

    def step(self, checkpoint: str) -> ModelStep:
        """The model step this input's items need (the run's options, and the outputs its placer takes)."""
        ...

    def job(self, store: str) -> SourceJob[U]:
        """The worker half, writing into `store` (the store, or the input's group of a job store)."""
        ...

    def size(self, unit: U) -> int:
        """Items in a unit (for progress)."""
        ...

    def describe(self, unit: U) -> str:
        """A unit in messages."""
        ...

    def check_resume(self, root: Group, attrs: Mapping[str, Any]) -> None:
        """Anything besides the configuration that stops --resume (a raster stitched already, say)."""
        ...

    def begin(self, root: Group, done: Mapping[int, Mapping[str, Any]], owner: Owner) -> None:
        """The store is ready and `done` holds the ledger's finished units; units are about to run (a raster starts its stitcher)."""
        ...

    def unit_done(self, unit: U, entry: Mapping[str, Any]) -> None:
        """In the driver, as each unit finishes (a raster stitches the chunks the tile completes)."""
        ...

    def finish(self, root: Group, units: Sequence[U], ran: Sequence[U], summary: RunSummary, owner: Owner) -> None:
        """All units are in the ledger: write the final attributes (or stitch, then write them)."""
        ...


class FinalisedAtEnd:
    """For a source whose store is only finalised once every unit is done (video, image folders).

    Nothing to follow while units run, and nothing besides the configuration
    stops --resume. A raster follows its tiles instead (it stitches as they finish).
    """

    def begin(self, root: Group, done: Mapping[int, Mapping[str, Any]], owner: Owner) -> None:
        return None

    def unit_done(self, unit: Any, entry: Mapping[str, Any]) -> None:
        return None

    def check_resume(self, root: Group, attrs: Mapping[str, Any]) -> None:
        return None
