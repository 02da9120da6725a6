"""Video through PyAV: a demux-only plan, then frame-exact decoding of any frame range.

The plan (one pass over packets, no decoding) gives the exact frame count,
every frame's presentation time and the keyframes. A worker decoding frames
[start, stop) seeks to the keyframe at or before `start`, decodes forward and
drops what comes before `start`: seeking alone lands on a keyframe, not on a
frame, so this is what makes every frame decoded by exactly one unit and equal
to sequential decoding.

Corrupt data can decode without any exception, so decoding also compares what
came out with the plan and captures FFmpeg's error log: a unit reports the
frames that were missing or decoded with errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segbatch.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp")


@dataclass(frozen=True)
class VideoPlan:
    """What one demux pass tells about a video stream (frames in presentation order)."""

    path: str
    codec: str
    coded_height: int
    coded_width: int
    rotation: int  # degrees the frames must turn (counter-clockwise) to show upright: 0, 90, 180 or 270
    time_base: Fraction
    pts: np.ndarray = field(repr=False)  # int64 presentation timestamps, sorted
    keyframes: np.ndarray = field(repr=False)  # frame indices of keyframes, sorted

    @property
    def frames(self) -> int:
        return len(self.pts)

    @property
    def height(self) -> int:
        """Height in display orientation."""
        return self.coded_width if self.rotation in (90, 270) else self.coded_height

    @property
    def width(self) -> int:
        """Width in display orientation."""
        return self.coded_height if self.rotation in (90, 270) else self.coded_width

    @property
    def times(self) -> np.ndarray:
        """Presentation time of every frame in seconds, from its pts (variable frame rate kept)."""
        return self.pts.astype(np.float64) * float(self.time_base)

    def keyframe_at_or_before(self, index: int) -> int:
        """The frame index decoding must start from to reach frame `index`."""
        return int(self.keyframes[np.searchsorted(self.keyframes, index, side="right") - 1])


def _open(path: str | Path) -> Any:
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a video") from None
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a readable video ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def probe_video(path: str | Path) -> VideoPlan:
    """Plan a video from its packets: frame count, timestamps, keyframes; decodes only the first frame (for rotation)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no"]
            raise InputError(f"{path} has no video stream ({', '.join(kinds)} streams only)")
        stream = container.streams.video[0]
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    raise InputError(f"{path}: video packets carry no timestamps; remux it (ffmpeg -i IN -c copy OUT.mkv)")
                pts.append(stamp)
                keys.append(packet.is_keyframe)
        except av.FFmpegError as exc:
            if not pts:
                raise InputError(f"{path} is not a readable video ({_reason(exc)})") from None
            # a damaged tail: plan what could be demuxed; decoding reports the rest
        if not pts:
            raise InputError(f"{path} has a video stream with zero frames")
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        sorted_pts = np.asarray(pts, dtype=np.int64)[order]
        if len(np.unique(sorted_pts)) != len(sorted_pts):
            raise InputError(f"{path}: several frames share a timestamp; remux it (ffmpeg -i IN -c copy OUT.mkv)")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        keyframes = np.sort(rank[np.asarray(keys, dtype=bool)])
        if len(keyframes) == 0 or keyframes[0] != 0:
            keyframes = np.concatenate([[0], keyframes])  # decoding from the start always works
        rotation = _first_frame_rotation(container, stream)
        codec = stream.codec_context.name
        height, width = stream.codec_context.height, stream.codec_context.width
        time_base = Fraction(stream.time_base)
    return VideoPlan(
        path=str(path),
        codec=codec,
        coded_height=height,
        coded_width=width,
        rotation=rotation,
        time_base=time_base,
        pts=sorted_pts,
        keyframes=keyframes,
    )


def _first_frame_rotation(container: Any, stream: Any) -> int:
    """Rotation from the display matrix, read off the first decoded frame (PyAV exposes it per frame)."""
    import av

    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return int(round(frame.rotation)) % 360
    except av.FFmpegError:
        return 0
    return 0


@dataclass
class DecodeReport:
    """What went wrong while decoding a frame range: frame indices, and FFmpeg's messages."""

    missing: list[int] = field(default_factory=list)  # frames the plan promised that never came out
    damaged: list[int] = field(default_factory=list)  # frames decoded while the decoder logged errors
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.damaged)


def read_frames(plan: VideoPlan, start: int, stop: int, report: DecodeReport | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, RGB uint8 (H, W, 3) in display orientation) for frames [start, stop).

    Frames the decoder cannot produce are skipped and listed in `report.missing`;
    frames decoded while FFmpeg logged errors are yielded and listed in `report.damaged`.
    """
    import av

    if not 0 <= start <= stop <= plan.frames:
        raise InputError(f"frame range {start}:{stop} is outside 0:{plan.frames}")
    report = report if report is not None else DecodeReport()
    index_of = {int(p): i for i, p in enumerate(plan.pts)}
    expected = start
    with _open(plan.path) as container, av.logging.Capture(local=True) as logs:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = plan.keyframe_at_or_before(start)
        container.seek(int(plan.pts[first]), stream=stream, backward=True, any_frame=False)
        seen_logs = 0
        try:
            for frame in container.decode(stream):
                idx = index_of.get(frame.pts if frame.pts is not None else -1)
                errors = [msg for level, _, msg in logs[seen_logs:] if level <= av.logging.ERROR]
                seen_logs = len(logs)
                if idx is None or idx < start:
                    continue
                if idx >= stop:
                    break
                report.missing.extend(range(expected, idx))
                expected = idx + 1
                if errors or frame.is_corrupt:
                    report.damaged.append(idx)
                    report.messages.extend(m.strip() for m in errors)
                yield idx, _upright(frame.to_ndarray(format="rgb24"), plan.rotation)
        except av.FFmpegError as exc:
            report.messages.append(_reason(exc))
    report.missing.extend(range(expected, stop))


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame by the display matrix's rotation (counter-clockwise degrees)."""
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
