"""Video as a source: units of whole chunks of frames, read by seeking to a keyframe and decoding forward.

A unit is a chunk-aligned frame range; its worker seeks to the keyframe at or
before its first frame (or, where the same actor read the unit before it, goes
on with that unit's decoder: the pool hands each actor a stretch of units),
decodes forward in presentation order (frames by pts; by the decoder's output
order where the pts contradict it), drops what comes before its range, runs the model on batches of `--batch-size`
consecutive frames from the unit's first, and writes each chunk of frames
whole as soon as it is full.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segbatch import location
from segbatch.engine.job import RunConfig, source_identity
from segbatch.engine.outcome import RunSummary, finished_or_fail, mark_complete
from segbatch.engine.outputs import empty_outputs, fill_value, output_names
from segbatch.engine.pipeline import require_readable
from segbatch.engine.source import UNITS_PER_ACTOR, FinalisedAtEnd, Item, UnitReport, Write
from segbatch.engine.step import ModelStep
from segbatch.errors import InputError
from segbatch.owner import Owner
from segbatch.problems import index_ranges
from segbatch.progress import note
from segbatch.sources.video import DecodeReport, VideoPlan, check_hwaccel, probe_video, read_frames, truncation_problems
from segbatch.store import StoreLayout

if TYPE_CHECKING:
    from zarr import Group

CHUNK_PIXELS = 2_000_000  # about 2 MB of labels (4 MB of float16) per chunk
MAX_CHUNK_FRAMES = 8
MAX_UNIT_FRAMES = 256  # a unit is at most this many frames (whole chunks): a GOP of x264's default 250 fits one
MAX_MESSAGES = 5


@dataclass(frozen=True)
class FrameUnit:
    """Frames [start, stop) of the source, written to store rows [start - first, stop - first)."""

    id: int
    start: int
    stop: int


def chunk_frames_for(height: int, width: int) -> int:
    """Frames per chunk: about CHUNK_PIXELS label bytes, at most MAX_CHUNK_FRAMES."""
    return max(1, min(MAX_CHUNK_FRAMES, CHUNK_PIXELS // max(1, height * width)))


def unit_frames_for(chunk_frames: int, gop: int, frames: int, actors: int) -> int:
    """Frames per unit: whole chunks; a GOP long where possible, yet enough units to keep every actor busy.

    A unit that seeks decodes forward from a keyframe, so one shorter than
    the GOP decodes the reference frames before it again (the others are
    skipped: `segbatch.sources.video`); next to a GPU that is not cheap, at
    1080p (a chunk is a frame) least of all. Units an actor runs in turn go
    on with one decoder, so this is paid once per stretch of units, not per
    unit; but a stretch starts with a seek. Too few units leave actors idle
    (a single long-GOP clip would be one unit). So: at least UNITS_PER_ACTOR
    units per actor, else up to a GOP, at most MAX_UNIT_FRAMES.
    """
    by_gop = max(1, min(MAX_UNIT_FRAMES // chunk_frames, -(-gop // chunk_frames)))
    by_load = max(1, frames // (chunk_frames * UNITS_PER_ACTOR * max(1, actors)))
    return chunk_frames * min(by_gop, by_load)


def plan_frame_units(first: int, stop: int, unit_frames: int) -> list[FrameUnit]:
    """Cut source frames [first, stop) into units of `unit_frames` (a multiple of the chunk), each owning whole chunks."""
    return [FrameUnit(i, s, min(s + unit_frames, stop)) for i, s in enumerate(range(first, stop, unit_frames))]


def frame_range(plan: VideoPlan, frames: tuple[int | None, int | None] | None) -> tuple[int, int]:
    """--frames A:B (Python-style: B exclusive, either side optional) checked against the video."""
    first, stop = frames or (None, None)
    first = 0 if first is None else first
    stop = plan.frames if stop is None else stop
    if not 0 <= first < stop <= plan.frames:
        raise InputError(f"--frames {first}:{stop} is outside the video's 0:{plan.frames}")
    return first, stop


@dataclass(frozen=True)
class VideoJob:
    """The worker half: everything an actor needs about the video besides the unit (sent once to each)."""

    store: str
    float_dtype: str  # of the store's float arrays (the fill values of frames that never decode)
    outputs: tuple[str, ...]  # the store's arrays
    plan: VideoPlan
    first_frame: int  # --frames A:B cuts the source to [first_frame, stop_frame)
    stop_frame: int
    chunk_frames: int  # frames per store chunk; a unit is a run of whole chunks
    hwaccel: str | None = None  # decode on the GPU (PyAV hardware acceleration), e.g. "cuda"

    def check_node(self) -> None:
        import av.video.reformatter  # noqa: F401  # the decoder: imported as the actor starts, not in its first unit's way

        require_readable(self.plan.path)
        if self.hwaccel:
            check_hwaccel(self.plan, self.hwaccel)  # on the node that will decode: its GPU, its FFmpeg

    def read(self, unit: FrameUnit, report: UnitReport) -> Generator[Item, None, None]:
        decode = DecodeReport()
        with closing(read_frames(self.plan, unit.start, unit.stop, decode, self.hwaccel)) as frames:  # its decoder passes on now
            for i, rgb in frames:
                yield Item(i, rgb)
        report.missing, report.damaged, report.messages = decode.missing, decode.damaged, decode.messages

    def to_model(self, x: Any) -> Any:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1], on the device (a quarter of the bytes cross to it)."""
        return x.permute(0, 3, 1, 2).float().div_(255)

    def from_model(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return outputs  # already the store's arrays in its dtypes

    def placer(self, unit: FrameUnit, num_classes: int) -> FramePlacer:
        return FramePlacer(self, unit, num_classes)

    def unit_stats(self, unit: FrameUnit, report: UnitReport) -> dict[str, Any]:
        return {
            "unit": unit.id,
            "frames": [unit.start, unit.stop],
            "missing": index_ranges(report.missing),
            "damaged": index_ranges(report.damaged),
            "messages": list(dict.fromkeys(report.messages))[:MAX_MESSAGES],
        }


class FramePlacer:
    """A unit's frames into whole chunks: one chunk in memory at a time, written when the next one's first frame arrives."""

    def __init__(self, job: VideoJob, unit: FrameUnit, num_classes: int) -> None:
        self.job, self.unit, self.num_classes = job, unit, num_classes
        self.start = unit.start
        self.stop = min(unit.start + job.chunk_frames, unit.stop)
        self.arrays = self._empty()

    def _empty(self) -> dict[str, np.ndarray]:
        shape = (self.stop - self.start, self.job.plan.height, self.job.plan.width)
        self.placed = np.zeros(shape[0], bool)  # rows set; the others get fill values when the chunk goes
        return empty_outputs(self.job.outputs, shape, self.num_classes, self.job.float_dtype)

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        writes = []
        for row, item in enumerate(items):
            while item.index >= self.stop:
                writes.append(self._next())
            for name, arr in self.arrays.items():
                arr[item.index - self.start] = outputs[name][row]
            self.placed[item.index - self.start] = True
        return writes

    def close(self) -> list[Write]:
        """The rest of the unit's chunks, frames that never decoded included (fill values)."""
        writes = [self._next()]
        while self.start < self.unit.stop:
            writes.append(self._next())
        return writes

    def _next(self) -> Write:
        first = self.job.first_frame
        if not self.placed.all():  # frames that never decoded
            for name, arr in self.arrays.items():
                arr[~self.placed] = fill_value(name)
        write = Write((slice(self.start - first, self.stop - first),), self.arrays)
        self.start, self.stop = self.stop, min(self.stop + self.job.chunk_frames, self.unit.stop)
        if self.start < self.unit.stop:
            self.arrays = self._empty()
        return write


class VideoSource(FinalisedAtEnd):
    """The driver half: plan the video, lay out the store, cut the units, finalise."""

    kind = "video"
    noun = "frame"

    def __init__(self, cfg: RunConfig, ckpt: Any) -> None:
        if not location.exists(cfg.input):
            raise InputError(f"{cfg.input}: no such file")
        if ckpt.spec.in_channels != 3:
            raise InputError(f"the model takes {ckpt.spec.in_channels} input bands; video frames have 3 (RGB)")
        self.cfg, self.ckpt = cfg, ckpt
        self.plan = probe_video(cfg.input)
        if self.plan.demux_error:
            note(f"warning: {cfg.input}: {self.plan.demux_error}; segmenting the frames before it", cfg.quiet)
        if self.plan.output_order:
            note(f"note: {cfg.input}: its timestamps are in decode order (pts == dts with B-frames); frames are numbered as the decoder shows them", cfg.quiet)
        self.first, self.stop = frame_range(self.plan, cfg.frames)
        self.outputs = output_names(cfg)
        self.chunk = chunk_frames_for(self.plan.height, self.plan.width)
        self.max_units = -(-(self.stop - self.first) // self.chunk)

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "source": source_identity(cfg.input),
            "batch_size": cfg.batch_size,
            "frames": [self.first, self.stop],
            "resize": list(cfg.resize) if cfg.resize else None,
            "outputs": list(self.outputs),
            "chunk_frames": self.chunk,
            "hwaccel": cfg.hwaccel,
        }

    def new_store(self, actors: int) -> tuple[StoreLayout, dict[str, Any]]:
        plan, cfg = self.plan, self.cfg
        unit_frames = unit_frames_for(self.chunk, plan.gop, self.stop - self.first, actors)
        layout = StoreLayout(
            dims=("frame", "y", "x"),
            shape=(self.stop - self.first, plan.height, plan.width),
            chunks=(self.chunk, plan.height, plan.width),
            num_classes=self.ckpt.spec.num_classes,
            units=len(plan_frame_units(self.first, self.stop, unit_frames)),
            outputs=self.outputs,
            float_dtype=cfg.float_dtype,
            coords={
                "time": (
                    ("frame",),
                    np.asarray(plan.times[self.first : self.stop], dtype=np.float64),
                    {"units": "s", "long_name": "presentation time from the stream's pts"},
                )
            },
        )
        source = {
            "path": location.absolute(cfg.input),
            "kind": "video",
            "codec": plan.codec,
            "frames": plan.frames,
            "declared_frames": plan.declared,  # what the container's index declares (MP4/MOV): more than `frames` when the file is truncated
            "height": plan.height,
            "width": plan.width,
            "rotation": plan.rotation,
            "frame_order": "decoder output" if plan.output_order else "pts",  # what says which frame is which
            "time_base": str(plan.time_base),
            "frame_range": [self.first, self.stop],
            "demux_error": plan.demux_error,
        }
        return layout, {"source": source, "resize": list(cfg.resize) if cfg.resize else None, "unit_frames": unit_frames}

    def units(self, attrs: Mapping[str, Any]) -> list[FrameUnit]:
        return plan_frame_units(self.first, self.stop, int(attrs["unit_frames"]))

    @staticmethod
    def job_options(cfg: RunConfig) -> dict[str, Any]:
        """What every video of a job shares in its fingerprint (each group's own adds its video's identity)."""
        options = {"batch_size": cfg.batch_size, "frames": list(cfg.frames) if cfg.frames else None, "resize": list(cfg.resize) if cfg.resize else None}
        return options | {"outputs": list(cfg.extra_outputs), "hwaccel": cfg.hwaccel}

    def step(self, checkpoint: str) -> ModelStep:
        model_outputs = tuple(name for name in self.outputs if name != "labels")
        return ModelStep.of(self.cfg, checkpoint, model_outputs, self.cfg.float_dtype, self.cfg.batch_size, self.cfg.resize)

    def job(self, store: str) -> VideoJob:
        cfg = self.cfg
        return VideoJob(
            store=store,
            float_dtype=cfg.float_dtype,
            outputs=self.outputs,
            plan=self.plan,
            first_frame=self.first,
            stop_frame=self.stop,
            chunk_frames=self.chunk,
            hwaccel=cfg.hwaccel,
        )

    def size(self, unit: FrameUnit) -> int:
        return unit.stop - unit.start

    def describe(self, unit: FrameUnit) -> str:
        return f"unit {unit.id} (frames {unit.start}:{unit.stop})"

    def finish(self, root: Group, units: Sequence[FrameUnit], ran: Sequence[FrameUnit], summary: RunSummary, owner: Owner) -> None:
        """From the ledger (this run's units and earlier ones'): the problems per unit, the truncated tail, the figures."""
        ledger = finished_or_fail(root, [u.id for u in units])
        problems = [
            {"kind": "frames"} | {k: v for k, v in stats.items() if k in ("frames", "missing", "damaged", "messages")}
            for _, stats in sorted(ledger.items())
            if stats.get("missing") or stats.get("damaged")
        ]
        problems += truncation_problems(self.plan, self.stop)
        frames = sum(s["frames"][1] - s["frames"][0] for s in ledger.values())
        mark_complete(root, problems, summary, {"frames": frames}, ledger)
