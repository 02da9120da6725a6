"""A folder of images (PNG, JPEG, TIFF; nested folders too): its items are images; its store is a stack padded to the largest."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbatch import schema
from segbatch.kinds.base import ItemPixels, Kind, OwnedRegions, Region
from segbatch.location import Location

if TYPE_CHECKING:
    from segbatch.audit.items import Block
    from segbatch.audit.ranking import Spacing
    from segbatch.audit.truth import TruthSource


# the store's `source` attribute, and one ledger entry besides schema.ENTRY_COMMON, as this kind writes them
SOURCE = schema.fields(
    {"path": schema.string, "kind": schema.string, "images": schema.integer(0), "max_height": schema.integer(1), "max_width": schema.integer(1)}
)
ENTRY = schema.fields(
    {"images": schema.span, "unreadable": schema.list_of(schema.fields({"path": schema.string, "image": schema.integer(0), "error": schema.string}))},
    schema.ENTRY_COMMON,
)


class Images(Kind):
    name = "images"
    noun = "image"
    article = "an image folder"
    plural = "image folders"
    options = ("resize", "extra_outputs")
    many = False  # a folder of images is one input: the folder of a job of many is one of videos or of rasters
    unit_size = "unit_images"

    source_fields = staticmethod(SOURCE)
    entry_fields = staticmethod(ENTRY)

    def source_class(self) -> Any:
        from segbatch.engine.images import ImageSource

        return ImageSource

    def layout(self, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
        source = attrs["source"]
        return (source["images"], source["max_height"], source["max_width"]), -(-source["images"] // attrs["unit_images"])

    def owned_regions(self, root: Any, source: Mapping[str, Any]) -> OwnedRegions:
        """Each image's rows and columns (an unreadable image writes none)."""
        heights, widths = root["height"][...], root["width"][...]

        def regions(unit: int, entry: Mapping[str, Any]) -> list[Region]:
            unreadable = {u["image"] for u in entry["unreadable"]}
            images = [i for i in range(*entry["images"]) if i not in unreadable and i < len(heights)]
            return [(slice(i, i + 1), slice(0, int(heights[i])), slice(0, int(widths[i]))) for i in images]

        return regions

    def audit_blocks(self, root: Any, attrs: Mapping[str, Any], group: str | None) -> Iterator[Block]:
        """One block per image, its own size within the padded stack, named by its path in the folder."""
        from segbatch.audit.items import Block, Item

        paths = root["path"][...]
        heights, widths = root["height"][...], root["width"][...]
        for i, (path, h, w) in enumerate(zip(paths, heights, widths)):
            region = (slice(i, i + 1), slice(0, int(h)), slice(0, int(w)))
            yield Block(region, ((Item(i, region, str(path), {"path": str(path), "height": int(h), "width": int(w)}, group), (slice(None),) * 3),))

    def spacing(self, root: Any, min_gap: float | None, top: int) -> Spacing:
        """None: the images of a folder are not a sequence."""
        from segbatch.audit.ranking import Spacing
        from segbatch.errors import InputError

        if min_gap:
            raise InputError("--min-gap applies to video (seconds) and raster (tiles) stores; the images of a folder are not spaced")
        return Spacing(self.name, 0.0, 0.0, 1)

    def input_reader(self, source: Mapping[str, Any], root: Any, path: Location) -> ItemPixels | str:
        """The image file, from the folder the store names."""
        from segbatch.audit.thumbnails import to_display
        from segbatch.sources.images import read_image, to_unit_float

        folder = Path(source["path"])
        return lambda item: to_display(to_unit_float(read_image(folder / item.meta["path"])))

    def open_truth(self, path: Path, root: Any, attrs: Mapping[str, Any]) -> TruthSource:
        """A folder of masks, matched by path or by a unique file stem."""
        from segbatch.audit.truth import FolderTruth, is_array_truth
        from segbatch.errors import InputError

        if is_array_truth(path):
            raise InputError(f"--truth {path}: an image store takes a folder of masks, not an array")
        if not path.is_dir():
            raise InputError(f"--truth {path}: an image store takes a folder of masks")
        return FolderTruth(path)

    def info_rows(self, source: Mapping[str, Any]) -> list[tuple[str, str]]:
        """How many images, and the padded stack's size."""
        return [("images", f"{source['images']} (largest {source['max_width']}x{source['max_height']}; smaller ones padded with nodata)")]
