"""A video (a file or a URL FFmpeg reads): its items are frames; its store is (frame, y, x) with a `time` coordinate."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbatch import schema
from segbatch.kinds.base import ItemPixels, Kind, OwnedRegions, Region
from segbatch.location import Location

if TYPE_CHECKING:
    import numpy as np

    from segbatch.audit.items import Block, Item
    from segbatch.audit.ranking import Spacing
    from segbatch.audit.truth import TruthSource
    from segbatch.kinds.base import Exporter

TIME_TOLERANCE = 1e-6  # seconds: frames 25 apart at 25 fps are 1 s apart, whatever the float rounding of `time`


def _frame_range_within(source: Mapping[str, Any], path: str) -> str | None:
    if source["frame_range"][1] > source["frames"]:
        return f"{path}.frame_range {source['frame_range']} ends after the video's {source['frames']} frames"
    return None


# the store's `source` attribute, and one ledger entry besides schema.ENTRY_COMMON, as this kind writes them
SOURCE = schema.fields(
    {
        "path": schema.string,
        "kind": schema.string,
        "codec": schema.string,
        "frames": schema.integer(0),
        "height": schema.integer(1),
        "width": schema.integer(1),
        "rotation": schema.number,
        "frame_range": schema.span,
    },
    {
        "declared_frames": schema.nullable(schema.integer(0)),
        "time_base": schema.string,
        "demux_error": schema.nullable(schema.string),
        "frame_order": schema.string,
    },
    _frame_range_within,
)
ENTRY = schema.fields(
    {"frames": schema.span},
    {**schema.ENTRY_COMMON, "missing": schema.RANGES, "damaged": schema.RANGES, "messages": schema.list_of(schema.string)},
)


class Video(Kind):
    name = "video"
    noun = "frame"
    article = "a video"
    plural = "videos"
    options = ("frames", "hwaccel", "batch_size", "resize", "extra_outputs")
    many = True
    unit_size = "unit_frames"
    timeline = True
    default_gap = 1.0
    gap_unit = "s"

    source_fields = staticmethod(SOURCE)
    entry_fields = staticmethod(ENTRY)

    def source_class(self) -> Any:
        from segbatch.engine.video import VideoSource

        return VideoSource

    def layout(self, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
        source = attrs["source"]
        first, stop = source["frame_range"]
        return (stop - first, source["height"], source["width"]), -(-(stop - first) // attrs["unit_frames"])

    def coordinates_problem(self, root: Any, attrs: Mapping[str, Any]) -> str | None:
        first, stop = attrs["source"]["frame_range"]
        if "time" not in root or tuple(root["time"].shape) != (stop - first,):
            return f"the time coordinate does not have the {stop - first} frames of source.frame_range"
        return None

    def owned_regions(self, root: Any, source: Mapping[str, Any]) -> OwnedRegions:
        """A unit's frames (its entry's, from the source's numbering to the store's)."""
        first = source["frame_range"][0]

        def regions(unit: int, entry: Mapping[str, Any]) -> list[Region]:
            return [(slice(entry["frames"][0] - first, entry["frames"][1] - first),)]

        return regions

    def audit_blocks(self, root: Any, attrs: Mapping[str, Any], group: str | None) -> Iterator[Block]:
        """One block per chunk of frames; an item is a frame, named by its number in the source."""
        import numpy as np

        from segbatch.audit.items import Block, Item

        labels = root["labels"]
        frames, step = labels.shape[0], labels.chunks[0]
        first = int(attrs["source"]["frame_range"][0])
        times = np.asarray(root["time"][...], np.float64)
        for lo in range(0, frames, step):
            hi = min(lo + step, frames)
            items = tuple(
                (Item(i, (slice(i, i + 1),), f"frame {first + i}", {"frame": first + i, "time": float(times[i])}, group), (slice(i - lo, i - lo + 1),))
                for i in range(lo, hi)
            )
            yield Block((slice(lo, hi),), items)

    def spacing(self, root: Any, min_gap: float | None, top: int) -> Spacing:
        """Picks at least `--min-gap` seconds apart on the store's `time` (its neighbourhood: the most frames that close).

        The default is `default_gap`, or the video's length over `top - 1` when
        that is shorter (a 40-frame clip still gets its `top` picks, spread over it),
        and filled up with the best other frames if spacing still leaves fewer.
        """
        import numpy as np

        from segbatch.audit.ranking import Spacing

        times = np.sort(np.asarray(root["time"][...], np.float64))
        gap = self.default_gap if min_gap is None else float(min_gap)
        if min_gap is None and times.size and top > 1:
            gap = min(gap, float(times[-1] - times[0]) / (top - 1))  # `top` picks this far apart fit between the first and the last
        if gap <= 0:
            return Spacing(self.name, 0.0, 0.0, 1)
        radius = gap - TIME_TOLERANCE
        within = np.searchsorted(times, times + radius, side="left") - np.searchsorted(times, times - radius, side="right")
        return Spacing(self.name, gap, radius, max(1, int(within.max(initial=1))), fill=min_gap is None)

    def position(self, spacing: Spacing, item: Item) -> tuple[float, ...]:
        return (float(item.meta["time"]),)

    def input_reader(self, source: Mapping[str, Any], root: Any, path: Location) -> ItemPixels | str:
        """A frame decoded from the video, which must still have the frames and size the store records."""
        from segbatch.sources.video import probe_video, read_frames

        plan = probe_video(path)
        if plan.frames != source["frames"] or (plan.height, plan.width) != (source["height"], source["width"]):
            return f"the source {path} changed since the run; input thumbnails are left out"

        def read(item: Item) -> np.ndarray | None:
            frame = item.meta["frame"]
            with closing(read_frames(plan, frame, frame + 1)) as frames:  # its decoder closed now, not when collected
                got = next(frames, None)
            return got[1] if got is not None and got[0] == frame else None

        return read

    def open_truth(self, path: Path, root: Any, attrs: Mapping[str, Any]) -> TruthSource:
        """A folder of per-frame masks, or an array of the store's frames (or of the source's)."""
        from segbatch.audit.truth import ArrayTruth, FrameFolderTruth, is_array_truth
        from segbatch.errors import InputError

        shape = tuple(root["labels"].shape)
        if is_array_truth(path):
            source = attrs["source"]
            return ArrayTruth(path, shape, (source["frames"], int(source["frame_range"][0])))
        if not path.is_dir():
            raise InputError(f"--truth {path}: a video store takes a folder of per-frame masks, a .npy or a Zarr array")
        return FrameFolderTruth(path, shape[1:])

    def exporter(self) -> Exporter:
        """An overlay video, or a folder of PNG panels."""
        from segbatch.export import export_overlay

        return export_overlay

    def info_rows(self, source: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The frames the store holds, and the file's codec, size and rotation."""
        first, stop = source["frame_range"]
        truncated = f" (the index declares {source['declared_frames']}: truncated)" if (source.get("declared_frames") or 0) > source["frames"] else ""
        return [
            (
                "frames",
                f"{first}:{stop} of {source['frames']}{truncated} ({source['codec']}, {source['width']}x{source['height']}, rotation {source['rotation']})",
            )
        ]
