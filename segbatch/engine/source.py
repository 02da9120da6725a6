"""The one protocol every input kind plugs into the engine with: video, raster tiles, image folders (later more).

A source has two halves. The driver half (`Source`) plans: it checks the
input, names the settings that decide the output's bits, lays out the store,
cuts the work into units and, at the end, finishes the store (finalise, or
stitch). The worker half (`SourceJob`, sent once to each actor) reads a
unit's items in fixed batches and places the model's outputs in the store.
Everything else is the engine's, written once: the run prologue, the
elastic pool, the worker pipeline (read-ahead, device, copy back, writer),
fencing, digests and the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from segbatch.store import StoreLayout


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


class Placer(Protocol):
    """A unit's outputs on their way into the store: buffers them into whole chunks (one per unit, worker side)."""

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        """Take a batch's outputs (row i is items[i]); return the writes that are now whole."""
        ...

    def close(self) -> list[Write]:
        """The unit is read: the rest of its chunks (fill values where nothing arrived)."""
        ...


class SourceJob(Protocol):
    """The worker half of a source: picklable, sent once to each actor."""

    @property
    def store(self) -> str: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def run(self) -> str:
        """The run that owns the store (its lease): every write is fenced by it."""
        ...

    @property
    def threads(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def float_dtype(self) -> str:
        """The dtype of the model step's float outputs (cast on the device)."""
        ...

    @property
    def resize(self) -> tuple[int, int] | None: ...
    @property
    def model_outputs(self) -> tuple[str, ...]:
        """What the model step hands to the placer besides labels (see engine.pipeline.predict)."""
        ...

    def check_node(self) -> None:
        """At an actor's start: its node can read the input (and decode it as asked)."""
        ...

    def where(self, unit: Any) -> tuple[str, int]:
        """The group of a job store the unit writes into ("" = the store itself), and its row in that group's ledger."""
        ...

    def read(self, unit: Any, report: UnitReport) -> Iterator[list[Item]]:
        """The unit's items, in batches whose composition depends on the unit only (that fixes the bits)."""
        ...

    def to_model(self, x: Any) -> Any:
        """A stacked batch on the model's device -> (B, C, H, W) float in [0, 1]."""
        ...

    def placer(self, unit: Any, num_classes: int) -> Placer:
        """Where a unit's outputs go."""
        ...

    def unit_stats(self, unit: Any, report: UnitReport) -> dict[str, Any]:
        """The unit's ledger entry (besides run, node, digests and stage times, which the engine adds)."""
        ...


class Source(Protocol):
    """The driver half of a source."""

    kind: str  # video | raster | images
    noun: str  # what an item is called in messages: frame, tile, image
    max_units: int  # the most units the input can be cut into (the pool is never larger)

    def fingerprint(self) -> dict[str, Any]:
        """The source's part of the settings that decide the output's bits (identity, ranges, sizes)."""
        ...

    def new_store(self, actors: int) -> tuple[StoreLayout, dict[str, Any]]:
        """The store's layout and the source's root attributes (`source`, unit size, ...), for a new run."""
        ...

    def units(self, attrs: Mapping[str, Any]) -> list[Any]:
        """The units, from the store's attributes (the unit size is fixed when the store is made)."""
        ...

    def job(self, store: str, checkpoint: str, run: str) -> SourceJob: ...

    def size(self, unit: Any) -> int:
        """Items in a unit (for progress)."""
        ...

    def describe(self, unit: Any) -> str:
        """A unit in messages."""
        ...

    def check_resume(self, root: Any, attrs: Mapping[str, Any]) -> None:
        """Anything besides the configuration that stops --resume (a raster stitched already, say)."""
        ...

    def begin(self, root: Any, done: Mapping[int, Mapping[str, Any]], keeper: Any) -> None:
        """The store is ready and `done` holds the ledger's finished units; units are about to run (a raster starts its stitcher)."""
        ...

    def unit_done(self, unit: Any, entry: Mapping[str, Any]) -> None:
        """In the driver, as each unit finishes (a raster stitches the chunks the tile completes)."""
        ...

    def finish(self, root: Any, units: Sequence[Any], ran: Sequence[Any], summary: Any, keeper: Any) -> None:
        """All units are in the ledger: write the final attributes (or stitch, then write them)."""
        ...


class FinalisedAtEnd:
    """For a source whose store is only finalised once every unit is done (video, image folders).

    Nothing to follow while units run, and nothing besides the configuration
    stops --resume. A raster follows its tiles instead (it stitches as they finish).
    """

    def begin(self, root: Any, done: Mapping[int, Mapping[str, Any]], keeper: Any) -> None:
        return None

    def unit_done(self, unit: Any, entry: Mapping[str, Any]) -> None:
        return None

    def check_resume(self, root: Any, attrs: Mapping[str, Any]) -> None:
        return None


def unit_id(unit: Any) -> int:
    """A unit's row in the ledger: a tile's id is the tile number, other units carry `.id`."""
    return int(unit if isinstance(unit, int) else unit.id)
