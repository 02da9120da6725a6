"""What a kind of input is to segbatch: its words, its `segbatch run` options, its store fields, and how readers take its stores.

A kind's engine half (planning, reading units, placing outputs) is its
`Source` and `SourceJob` (segbatch/engine/source.py); `source_class` names
it. Everything else that differs between kinds is here, so that readers
(schema, verify, audit, export) ask the kind instead of testing its name.
Methods import what they need when called: importing a kind stays as light
as the command line's `--help`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbatch.location import Location

if TYPE_CHECKING:
    import numpy as np

    from segbatch.audit.items import Block, Item
    from segbatch.audit.ranking import Spacing
    from segbatch.audit.truth import TruthSource
    from segbatch.export import ExportOptions
    from segbatch.schema import Check

Region = tuple[slice, ...]
OwnedRegions = Callable[[int, Mapping[str, Any]], list[Region]]  # (unit, its ledger entry) -> the output regions it wrote
ItemPixels = Callable[["Item"], "np.ndarray | None"]  # an audit item -> its source pixels as (H, W, 3) uint8, None where unreadable
Exporter = Callable[[Any, dict[str, Any], Path, "ExportOptions"], int]  # (root, attrs, target path, options) -> items written


class Kind(ABC):
    """One kind of input (video, raster, image folder): registered once in `segbatch.kinds.KINDS`."""

    name: str  # as stores record it (`source.kind`) and jobs (`input_kind`)
    noun: str  # one item, in messages: frame, tile, image
    article: str  # one input, in messages: "a video"
    plural: str  # inputs, in messages: "videos"
    options: tuple[str, ...]  # the `segbatch run` options (click parameter names) that apply to this kind, and not to every kind
    many: bool  # a folder, glob, @manifest or STAC file of such inputs is one job of many (segbatch.jobstore)
    source_fields: Check  # its store's `source` attribute, declared with segbatch.schema's checks (a staticmethod)
    entry_fields: Check  # one of its ledger entries, besides the fields every entry has (a staticmethod)
    unit_size: str | None = None  # the root attribute that fixes the items of a unit (None: one item a unit)
    tiled: bool = False  # outputs are blended from tiles/ (segbatch.tilestore), removed once stitched: no unit can be redone then
    timeline: bool = False  # the audit plots its items over time
    default_gap: float = 0.0  # `audit --min-gap` when not given (0: picks are not spaced)
    gap_unit: str = ""  # what `--min-gap` counts

    @abstractmethod
    def source_class(self) -> Any:
        """The engine's driver half for this kind (segbatch.engine.source.Source), imported now."""

    def source_problem(self, source: Mapping[str, Any], path: str) -> str | None:
        """What is wrong with a store's `source` attribute (called `path` in the message), or None (its fields, with segbatch.schema's checks)."""
        return self.source_fields(source, path)

    def entry_problem(self, entry: Mapping[str, Any], path: str) -> str | None:
        """What is wrong with one ledger entry of such a store (besides its chunk keys and run), or None."""
        return self.entry_fields(entry, path)

    @abstractmethod
    def layout(self, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
        """The labels' shape and the number of units that a store's (checked) attributes plan."""

    def coordinates_problem(self, root: Any, attrs: Mapping[str, Any]) -> str | None:
        """What is wrong with the coordinates readers index by (a video's time, a raster's grid), or None."""
        return None

    @abstractmethod
    def owned_regions(self, root: Any, source: Mapping[str, Any]) -> OwnedRegions:
        """For `segbatch verify`: the output regions each unit wrote, from its ledger entry."""

    def item_count(self, root: Any) -> int:
        """The audit's items in a store: one per row of the labels' first axis."""
        return int(root["labels"].shape[0])

    @abstractmethod
    def audit_blocks(self, root: Any, attrs: Mapping[str, Any], group: str | None) -> Iterator[Block]:
        """The store's audit items in order, in blocks of whole chunks (segbatch.audit.items)."""

    @abstractmethod
    def spacing(self, root: Any, min_gap: float | None, top: int) -> Spacing:
        """How far apart the audit's `top` picks must be, for `--min-gap` (None: the kind's default, `fill` set); checked >= 0
        already."""

    def position(self, spacing: Spacing, item: Item) -> tuple[float, ...]:
        """Where an item is, for spacing picks: its index."""
        return (float(item.index),)

    def describe_gap(self, gap: float) -> str:
        """How picks `gap` apart are spaced, for the report."""
        return f"at least {gap:g} {self.gap_unit} apart"

    @abstractmethod
    def input_reader(self, source: Mapping[str, Any], root: Any, path: Location) -> ItemPixels | str:
        """How the audit's thumbnails read an item's input from the source at `path` (there), or why they cannot (it changed)."""

    @abstractmethod
    def open_truth(self, path: Path, root: Any, attrs: Mapping[str, Any]) -> TruthSource:
        """The ground truth `audit --truth PATH` names for a store of this kind (PATH exists), checked against the store."""

    def exporter(self) -> Exporter | None:
        """What `segbatch export` writes of a store of this kind (None: it has no export)."""
        return None

    def info_rows(self, source: Mapping[str, Any]) -> list[tuple[str, str]]:
        """What `segbatch info` says about the store's input, besides its kind and path: (label, text) rows."""
        return []
