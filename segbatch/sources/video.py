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
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
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
    demux_error: str | None = None  # why the packets ended early, if they did (the plan covers what could be read)

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

    @property
    def gop(self) -> int:
        """Typical frames between keyframes (how far a seek may have to decode)."""
        return int(np.median(np.diff(np.append(self.keyframes, self.frames)))) if self.frames else 1


@contextmanager
def _open(path: str | Path, hwaccel: str | None = None) -> Iterator[Any]:
    """The container, from a path or (URLs) from an fsspec file object; with `hwaccel`, decoding on that device."""
    import av

    source: Any = None
    try:
        source = location.open_binary(path) if location.is_url(path) else str(path)
        options: dict[str, Any] = {"metadata_errors": "ignore"}
        if hwaccel:
            from av.codec.hwaccel import HWAccel

            options["hwaccel"] = HWAccel(hwaccel, allow_software_fallback=False)
        container = av.open(source, **options)
    except FileNotFoundError:
        _close(source)
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        _close(source)
        raise InputError(f"{path} is a folder, not a video") from None
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        _close(source)
        raise InputError(f"{path} is not a readable video ({_reason(exc)})") from None
    try:
        yield container
    finally:
        container.close()
        _close(source)


def _close(source: Any) -> None:
    if hasattr(source, "close"):
        source.close()


def check_hwaccel(plan: VideoPlan, hwaccel: str) -> None:
    """Decode the first frame with `hwaccel`, or say in one line why this machine cannot (no device, codec unsupported)."""
    import av
    from av.codec.hwaccel import hwdevices_available

    if hwaccel not in hwdevices_available():
        raise InputError(f"--hwaccel {hwaccel}: this FFmpeg offers {', '.join(hwdevices_available()) or 'no hardware decoders'}")
    try:
        with _open(plan.path, hwaccel) as container:
            next(container.decode(video=0)).to_ndarray(format="rgb24")
    except InputError as exc:
        raise InputError(f"--hwaccel {hwaccel}: cannot decode {plan.codec} on this machine's {hwaccel} device: {exc}") from None
    except (av.FFmpegError, OSError, StopIteration, ValueError) as exc:
        raise InputError(f"--hwaccel {hwaccel}: cannot decode {plan.codec} on this machine's {hwaccel} device ({_reason(exc)})") from None


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
        demux_error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # the end-of-stream flush packet; packets an edit list drops from presentation
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    raise InputError(f"{path}: video packets carry no timestamps; remux it (ffmpeg -i IN -c copy OUT.mkv)")
                pts.append(stamp)
                keys.append(packet.is_keyframe)
        except av.FFmpegError as exc:
            if not pts:
                raise InputError(f"{path} is not a readable video ({_reason(exc)})") from None
            demux_error = f"demuxing stopped after {len(pts)} frames: {_reason(exc)}"  # a damaged tail
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
        demux_error=demux_error,
    )


def _first_frame_rotation(container: Any, stream: Any) -> int:
    """Rotation from the display matrix, read off the first decoded frame (PyAV exposes it per frame)."""
    import av

    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return int(round(frame.rotation / 90.0)) * 90 % 360  # display matrices in the wild are quarter turns
    except av.FFmpegError:
        return 0
    return 0


@dataclass
class DecodeReport:
    """What went wrong while decoding a frame range: frame indices, and FFmpeg's messages."""

    missing: list[int] = field(default_factory=list)  # frames the plan promised that never came out
    damaged: list[int] = field(default_factory=list)  # frames decoded after a decoder error, up to the next keyframe
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.damaged)


MAX_SEEK_TRIES = 3


def read_frames(plan: VideoPlan, start: int, stop: int, report: DecodeReport | None = None, hwaccel: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, RGB uint8 (H, W, 3) in display orientation) for frames [start, stop).

    Seeks to the keyframe at or before `start`. Where the container's index is
    inexact (MPEG-TS, program streams) a seek can overshoot; then it retries
    from earlier keyframes and, at worst, decodes from the beginning. Frames
    the decoder cannot produce are listed in `report.missing`; frames decoded
    after a decoder error (until the next keyframe) are yielded and listed in
    `report.damaged`. `hwaccel` names an FFmpeg hardware decoder device
    ("cuda": NVDEC); frames come back to host memory as RGB either way.
    """
    if not 0 <= start <= stop <= plan.frames:
        raise InputError(f"frame range {start}:{stop} is outside 0:{plan.frames}")
    report = report if report is not None else DecodeReport()
    expected = start
    if start < stop:
        for key in _seek_candidates(plan, start):
            overshot = False
            for idx, rgb, damaged in _decode_from(plan, key, report, hwaccel):
                if idx < start:
                    continue
                if expected == start and idx > start and key > 0:
                    overshot = True  # the seek landed past `start`: try an earlier keyframe
                    break
                if idx >= stop:
                    break
                report.missing.extend(range(expected, idx))
                expected = idx + 1
                if damaged:
                    report.damaged.append(idx)
                yield idx, rgb
            if not overshot and (expected > start or key == 0):
                break  # else nothing came out at all after the seek: also try an earlier keyframe
    report.missing.extend(range(expected, stop))


def _seek_candidates(plan: VideoPlan, start: int) -> list[int]:
    """Keyframes to try seeking to, nearest first; 0 (decode from the start, no seek) last."""
    before = plan.keyframes[plan.keyframes <= start][::-1]
    return [int(k) for k in before[:MAX_SEEK_TRIES] if k > 0] + [0]


def _decode_from(plan: VideoPlan, key: int, report: DecodeReport, hwaccel: str | None = None) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Decode forward from keyframe `key`: (index, upright RGB, damaged) for every frame whose pts is in the plan.

    Packets are decoded one by one so a bad packet is recorded and skipped,
    not the end of the unit; FFmpeg's error log (written from its decoding
    threads too) marks the frames that follow as damaged until the next keyframe.
    """
    import av

    av.logging.set_level(av.logging.ERROR)  # without a level, FFmpeg's messages never reach Python
    damaged_until = -1
    last = key - 1
    with _open(plan.path, hwaccel) as container, av.logging.Capture(local=False) as logs:
        stream = container.streams.video[0]
        if key > 0:
            try:
                container.seek(int(plan.pts[key]), stream=stream, backward=True, any_frame=False)
            except av.FFmpegError as exc:
                report.messages.append(f"seek to frame {key} failed: {_reason(exc)}")
                return
        seen = 0
        for packet in _packets(container, stream, report):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                report.messages.append(_reason(exc))
                frames = []
                damaged_until = max(damaged_until, _next_keyframe(plan, last + 1))
            if len(logs) > seen:
                report.messages.extend(msg.strip() for level, _, msg in logs[seen:] if level <= av.logging.ERROR)
                seen = len(logs)
                damaged_until = max(damaged_until, _next_keyframe(plan, last + 1))
            for frame in frames:
                idx = _index_of(plan, frame.pts)
                if idx is None:
                    continue
                last = idx
                damaged = idx < damaged_until or frame.is_corrupt
                if frame.is_corrupt:
                    damaged_until = max(damaged_until, _next_keyframe(plan, idx + 1))
                yield idx, _rgb(frame, plan), damaged


def _packets(container: Any, stream: Any, report: DecodeReport) -> Iterator[Any]:
    """Demuxed packets of `stream` (the final empty one flushes the decoder); a broken tail ends the stream."""
    import av

    try:
        yield from container.demux(stream)
    except av.FFmpegError as exc:
        report.messages.append(_reason(exc))


def _index_of(plan: VideoPlan, pts: int | None) -> int | None:
    if pts is None:
        return None
    i = int(np.searchsorted(plan.pts, pts))
    return i if i < plan.frames and plan.pts[i] == pts else None


def _next_keyframe(plan: VideoPlan, index: int) -> int:
    later = plan.keyframes[plan.keyframes >= index]
    return int(later[0]) if len(later) else plan.frames


def _rgb(frame: Any, plan: VideoPlan) -> np.ndarray:
    """The frame as upright RGB at the plan's size (a stream that changes resolution is rescaled to its first size)."""
    if (frame.height, frame.width) != (plan.coded_height, plan.coded_width):
        frame = frame.reformat(width=plan.coded_width, height=plan.coded_height)
    return _upright(frame.to_ndarray(format="rgb24"), plan.rotation)


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame by the display matrix's rotation (counter-clockwise degrees)."""
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
