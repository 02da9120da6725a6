"""Video through PyAV: a demux-only plan, then frame-exact decoding of any frame range.

The plan (one pass over packets, no decoding) gives the exact frame count,
every frame's presentation time and the keyframes. A worker decoding frames
[start, stop) seeks to the keyframe at or before `start`, decodes forward and
drops what comes before `start`: seeking alone lands on a keyframe, not on a
frame, so this is what makes every frame decoded by exactly one unit and equal
to sequential decoding.

Decoders hand frames out in presentation order only as far as they know the
stream's reorder depth; on a stream that does not state it, or understates it,
they emit frames in decode order for a while. So frames are identified by
their pts and put back in order (`FrameOrder`), holding at most the stream's
reorder depth (measured from its packets) of them.

Some camera muxers write pts == dts on every packet of a stream with
B-frames: the decoder shows the frames in presentation order, each carrying
a decode-order time. There the pts cannot say which frame is which, so
frames are numbered by the decoder's output order instead (`output_order`,
see `_by_output_order`), and `time` is the sorted packet times.

Corrupt data can decode without any exception, so decoding also compares what
came out with the plan and captures FFmpeg's error log: a unit reports the
frames that were missing or decoded with errors. A file cut short (its index
declares more frames than its data holds) says so in the plan.
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict, deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
from segbatch.errors import InputError

MAX_REORDER = 32  # frames: measured reorder depths are capped here (codecs allow 16; more is broken timestamps)
EXACT_INDEX_FORMATS = ("mov", "mp4")  # demuxers whose frame count is exact: MP4's sample table (the index) lists every frame

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
    reorder: int = 0  # the most frames decoded before a frame that are shown after it (B-frames: 1 or 2)
    declared: int | None = None  # frames the container's index declares (MP4), where it declares them
    output_order: bool = False  # the pts are decode-order times (pts == dts with B-frames): frames numbered by the decoder's output

    @property
    def truncated(self) -> range:
        """Frames the container's index declares that the file does not hold (cut short): empty for a whole file."""
        return range(self.frames, max(self.frames, self.declared or 0))

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
        unplanned = 0  # packets in the container's index that are not frames of the plan
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    # the end-of-stream flush packet (no timestamps); empty packets; packets an edit list drops from presentation
                    unplanned += packet.pts is not None or packet.dts is not None
                    continue
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
        declared = _declared_frames(container, stream, unplanned)
        if declared is not None and declared > len(pts):
            cut = f"the file is truncated: its index declares {declared} frames, its data holds {len(pts)}"
            demux_error = f"{cut} ({demux_error})" if demux_error else cut
        reorder = _reorder_depth(np.asarray(pts, dtype=np.int64))
        output_order = reorder == 0 and _codec_reorders(stream)
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
        reorder=reorder,
        declared=declared,
        output_order=output_order,
    )


def truncation_problems(plan: VideoPlan, stop: int) -> list[dict[str, Any]]:
    """The store's problem entry for a file cut short, when the run reaches the end of what it holds.

    The store covers the frames the file holds; the frames its index declares
    beyond them are listed (source indices, like a unit's) as missing, with the
    reason "truncated".
    """
    if not plan.truncated or stop < plan.frames:
        return []
    cut = [plan.truncated.start, plan.truncated.stop]
    return [
        {
            "kind": "frames",
            "frames": cut,
            "missing": [cut],
            "damaged": [],
            "reason": "truncated",
            "messages": [f"the file's index declares {plan.declared} frames, its data holds {plan.frames}"],
        }
    ]


def _declared_frames(container: Any, stream: Any, unplanned: int) -> int | None:
    """Frames of the plan the container's index declares, from containers whose count is exact (MP4's sample table); else None."""
    name = getattr(container.format, "name", "") or ""
    if not any(n in EXACT_INDEX_FORMATS for n in name.split(",")) or not stream.frames:
        return None
    return int(stream.frames) - unplanned


def _reorder_depth(pts: np.ndarray) -> int:
    """The most frames decoded before a frame that are shown after it (pts in decode order), up to MAX_REORDER.

    This is the reorder depth a stream should declare (H.264's
    max_num_reorder_frames); a decoder that does not know it emits frames at
    most this far out of order. Counted over the previous MAX_REORDER packets.
    """
    depth = np.zeros(len(pts), dtype=np.int64)
    for lag in range(1, min(MAX_REORDER, len(pts) - 1) + 1):
        depth[lag:] += pts[:-lag] > pts[lag:]
    return int(min(depth.max(initial=0), MAX_REORDER))


def _codec_reorders(stream: Any) -> bool:
    """Whether the decoder shows frames in another order than it decodes them (B-frames), by what the stream's headers say.

    Packets whose pts never go back while this holds carry decode-order
    times (pts == dts): the container contradicts the decoder. A codec that
    cannot reorder (VP9, MJPEG) or a stream without B-frames (x264 writes its
    reorder depth, FFmpeg measures it while probing) is taken at its pts.
    """
    context = stream.codec_context
    return bool(context.codec.reorder and context.has_b_frames)


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
FrameStream = Generator[tuple[int, np.ndarray], None, None]  # (frame index, RGB); close it when stopping early: its decoder goes on
PARKED_DECODERS = 2  # decoders a process keeps open where a range ended, for the range that starts there


def read_frames(plan: VideoPlan, start: int, stop: int, report: DecodeReport | None = None, hwaccel: str | None = None) -> FrameStream:
    """Yield (frame index, RGB uint8 (H, W, 3) in display orientation) for frames [start, stop), in index order.

    Seeks to the keyframe at or before `start`. Where the container's index is
    inexact (MPEG-TS, program streams) a seek can overshoot; then it retries
    from earlier keyframes and, at worst, decodes from the beginning. Frames
    the decoder emits out of presentation order are put back in order; decoding
    goes on past `stop` until every frame before it has come out, or is known
    lost. Frames the decoder cannot produce are listed in `report.missing`;
    frames decoded after a decoder error (until the next keyframe) are yielded
    and listed in `report.damaged`. `hwaccel` names an FFmpeg hardware decoder
    device ("cuda": NVDEC); frames come back to host memory as RGB either way.

    A range that starts where one this process read ended goes on with that
    decoder instead of seeking (`_Parked`): consecutive units on one actor
    decode each frame once, however long the GOP.
    """
    if not 0 <= start <= stop <= plan.frames:
        raise InputError(f"frame range {start}:{stop} is outside 0:{plan.frames}")
    report = report if report is not None else DecodeReport()
    if start == stop:
        return
    version = (location.version(plan.path), hwaccel)
    decoding = _parked.begin(version, start, stop)
    kept: object = None  # what the range's reading returned: the decoder, once the range is read and it can go on
    try:
        if decoding is not None:
            kept = yield from _read(decoding, plan, start, stop, report, may_retry=False)
        else:
            for key in _seek_candidates(plan, start):
                kept = yield from _read(_Decoding(plan, key, start, hwaccel), plan, start, stop, report, may_retry=key > 0)
                if kept is not _SOUGHT_PAST:
                    break
    finally:
        _parked.end(version, stop, kept if isinstance(kept, _Decoding) else None)


_SOUGHT_PAST = object()  # `_read`: `start` never came out (a seek landed past it): try an earlier keyframe


def _read(
    decoding: _Decoding, plan: VideoPlan, start: int, stop: int, report: DecodeReport, may_retry: bool
) -> Generator[tuple[int, np.ndarray], None, object]:
    """Frames [start, stop) from `decoding` (just sought, or left where a range ending at `start` stopped). Returns the
    decoder where the next range can go on with it, else None; or, `may_retry`, _SOUGHT_PAST when `start` never came out
    (or nothing decoded). The decoder is closed unless it is returned."""
    decoding.parked = False
    try:
        marks = _marks(report)
        first = True
        for idx, item in _in_order(decoding, plan, start, stop, report):
            if first and item is None and may_retry:
                return _SOUGHT_PAST
            first = False
            if _yielded(idx, item, report):
                yield idx, item[0]
        return _to_park(decoding, report, marks, stop, plan.frames)
    finally:
        if not decoding.parked:
            decoding.close()


def _yielded(idx: int, item: Any, report: DecodeReport) -> bool:
    """Whether frame `idx` came out (else it is missing); a damaged one is listed."""
    if item is None:
        report.missing.append(idx)
        return False
    if item[1]:
        report.damaged.append(idx)
    return True


def _marks(report: DecodeReport) -> tuple[int, int, int]:
    return len(report.messages), len(report.damaged), len(report.missing)


def _to_park(decoding: _Decoding, report: DecodeReport, marks: tuple[int, int, int], stop: int, frames: int) -> _Decoding | None:
    """The decoder, to be parked, where it can go on exactly as if the next range had sought: a range can start there (not
    the end of the video or the stream), and it met no trouble in this range (no damage, no lost frame, no FFmpeg message,
    nothing damaged decoded ahead), where a seek might have decided otherwise (an earlier keyframe, damage judged afresh)."""
    clean = _marks(report) == marks and not any(damaged for _, _, damaged in decoding.ahead)
    if decoding.ended or stop >= frames or not clean:
        return None
    decoding.parked = True
    return decoding


class _Decoding:
    """An open decoder from keyframe `key`: its frames as it emits them, those that came out past a range kept for the next.

    Its FFmpeg messages go to its own log first, then to the report of the
    range being read when they were logged.
    """

    def __init__(self, plan: VideoPlan, key: int, start: int, hwaccel: str | None) -> None:
        from av.video.reformatter import VideoReformatter

        self.log = DecodeReport()
        self.rgb = VideoReformatter()  # one converter for the decoder's frames (see `_rgb`)
        self.decoded = _decode_from(plan, key, self.log, hwaccel, start)
        self.frames = _by_output_order(plan, _group(plan, start).start, self.decoded) if plan.output_order else self.decoded
        self.ahead: deque[tuple[int, Any, bool]] = deque()  # emitted past the last range's end, in the order they came
        self.ended = False  # the stream is over
        self.parked = False  # handed on to the next range (not closed with this one)

    def next(self, report: DecodeReport) -> tuple[int, Any, bool] | None:
        """The next frame out (index, frame, damaged): those kept from before first; None at the end of the stream."""
        if self.ahead:
            return self.ahead.popleft()
        got = next(self.frames, None)
        report.messages.extend(self.log.messages)
        self.log.messages.clear()
        self.ended = got is None
        return got

    def close(self) -> None:
        self.frames.close()
        self.decoded.close()  # the file, FFmpeg's log capture


class _Parked:
    """Decoders this process left open where a frame range ended, by (video version, frame): the range starting there goes on.

    Units of one video that follow each other on an actor then decode every
    frame once: a unit shorter than the GOP would otherwise decode the
    reference frames before it again. A range that starts where a range
    being read by another thread of this process will end waits for it (two
    units in flight on an actor, the second right after the first): its
    decoder is handed on in `end`, which the range's generator reaches
    however it stops (the pipeline closes its readers). A thread never waits
    for a range of its own (one it holds half read): it seeks.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.RLock()  # `end` may run from a generator's finaliser, inside this thread's own `begin`
        self.idle: OrderedDict[tuple[Any, int], _Decoding] = OrderedDict()
        self.ending: dict[tuple[Any, int], tuple[int, threading.Event]] = {}  # ranges being read, by where they end: thread, done

    def begin(self, version: Any, start: int, stop: int) -> _Decoding | None:
        """The decoder a range ending at `start` left (after it ends, if another thread reads it now); this range's end is noted."""
        me = threading.get_ident()
        with self.lock:
            reader, done = self.ending.get((version, start), (me, None))
        if done is not None and reader != me:
            done.wait()
        with self.lock:
            self.ending.setdefault((version, stop), (me, threading.Event()))
            return self.idle.pop((version, start), None)

    def end(self, version: Any, stop: int, decoding: _Decoding | None) -> None:
        """A range ending at `stop` is over: its decoder, if it can go on, waits there for the next (the oldest beyond `size` close)."""
        closing_: list[_Decoding] = []
        with self.lock:
            if decoding is not None:
                self.idle[(version, stop)] = decoding
                while len(self.idle) > self.size:
                    closing_.append(self.idle.popitem(last=False)[1])
            _, done = self.ending.pop((version, stop), (None, None))
        if done is not None:
            done.set()
        for old in closing_:
            old.close()

    def close(self) -> None:
        """Close every parked decoder (at exit: while the modules they use are still there)."""
        with self.lock:
            idle, self.idle = list(self.idle.values()), OrderedDict()
        for decoding in idle:
            decoding.close()


_parked = _Parked(PARKED_DECODERS)
atexit.register(_parked.close)


class FrameOrder:
    """Frames [start, stop) back in index order, from a decoder that may emit them out of presentation order.

    `put` takes each decoded frame; it gives back, in index order, the frames
    that can go: (index, item), or (index, None) for a frame known lost. A frame
    waits until every frame before it has gone. A frame that has not come out
    is known lost once more than `depth` later frames have: a decoder holds a
    frame back only behind frames decoded before it and shown after it, and a
    stream has at most its reorder depth of those. So at most `depth` frames
    are held; frames past `stop` count as later ones but are not kept.
    """

    def __init__(self, start: int, stop: int, depth: int) -> None:
        self.next, self.stop, self.depth = start, stop, depth
        self.held: dict[int, Any] = {}  # frames after `next` that came out, waiting for it
        self.later: set[int] = set()  # indices >= `next` that came out (held, or past `stop`)

    @property
    def done(self) -> bool:
        return self.next >= self.stop

    def wants(self, index: int) -> bool:
        """Whether `put(index, ...)` would keep the frame (so it is worth converting)."""
        return self.next <= index < self.stop and index not in self.later

    def put(self, index: int, item: Any) -> list[tuple[int, Any]]:
        if index < self.next or index in self.later:
            return []  # before the range, already gone, or a second copy
        self.later.add(index)
        if index < self.stop:
            self.held[index] = item
        out = []
        while not self.done and (self.next in self.later or len(self.later) > self.depth):
            out.append(self._pop())
        return out

    def close(self) -> list[tuple[int, Any]]:
        """At the end of the stream: everything still held, in order, and the frames that never came as lost."""
        out = []
        while not self.done:
            out.append(self._pop())
        return out

    def _pop(self) -> tuple[int, Any]:
        index = self.next
        self.later.discard(index)
        self.next += 1
        return index, self.held.pop(index, None)


def _in_order(decoding: _Decoding, plan: VideoPlan, start: int, stop: int, report: DecodeReport) -> Generator[tuple[int, Any], None, None]:
    """Frames [start, stop) from `decoding`: (index, (upright RGB, damaged)) in order, (index, None) for lost ones.

    Frames that come out past `stop` are counted (a frame is known lost once
    enough later ones came out) and kept in `decoding.ahead` for a range
    that goes on from there.
    """
    order = FrameOrder(start, stop, plan.reorder)
    past: list[tuple[int, Any, bool]] = []
    try:
        while not order.done:
            got = decoding.next(report)
            if got is None:
                break
            idx, frame, damaged = got
            if idx >= stop:
                past.append(got)
            yield from order.put(idx, (_rgb(frame, plan, decoding.rgb), damaged) if order.wants(idx) else None)
    finally:
        decoding.ahead.extendleft(reversed(past))  # before any kept from earlier that this range did not reach
    yield from order.close()


def _seek_candidates(plan: VideoPlan, start: int) -> list[int]:
    """Keyframes to try seeking to, nearest first; 0 (decode from the start, no seek) last.

    Frames numbered by output order start a keyframe earlier: the frames of
    `start`'s group shown before its keyframe reference the group before it
    (open GOPs), and a decoder that starts at the keyframe drops them, which
    would shift the numbering of the whole group (`_by_output_order`).
    """
    before = plan.keyframes[plan.keyframes <= start][::-1]
    if plan.output_order:
        before = before[1:]
    return [int(k) for k in before[:MAX_SEEK_TRIES] if k > 0] + [0]


def _group(plan: VideoPlan, index: int) -> range:
    """The frames from the keyframe at or before frame `index` up to the next keyframe."""
    after = int(np.searchsorted(plan.keyframes, index, side="right"))
    return range(int(plan.keyframes[after - 1]), int(plan.keyframes[after]) if after < len(plan.keyframes) else plan.frames)


def _by_output_order(plan: VideoPlan, first: int, decoded: Iterator[tuple[int, Any, bool]]) -> Generator[tuple[int, Any, bool], None, None]:
    """Frames numbered by the decoder's output order, for a stream whose pts are decode-order times (`plan.output_order`).

    `decoded` names each frame by its packet (its pts is the packet's). A
    keyframe starts a group: the packets up to the next keyframe. The decoder
    shows a group's frames together, after every frame of the groups before
    it, so the group of keyframe k is shown as frames [k, next keyframe), in
    the order the decoder emits them; its leading frames (decoded after k,
    shown before it) included. Groups before `first` are dropped: decoding
    starts a group early. A frame that never comes out leaves its group's
    last place empty (the decoder alone knows where it was shown).
    """
    emitted: dict[int, int] = {}  # group (its keyframe) -> its frames emitted so far
    for index, frame, damaged in decoded:
        group = _group(plan, index)
        count = emitted.get(group.start, 0)
        if group.start < first or count >= len(group):
            continue  # a group before the range; a frame more than the group has packets (never seen)
        emitted[group.start] = count + 1
        yield group[count], frame, damaged


def _decode_from(plan: VideoPlan, key: int, report: DecodeReport, hwaccel: str | None = None, start: int = 0) -> Generator[tuple[int, Any, bool], None, None]:
    """Decode forward from keyframe `key`: (index, frame, damaged) for every frame whose pts is in the plan, as the decoder emits them.

    The index is the frame's place among the plan's pts: where the plan
    numbers frames by output order, that is its packet's place (decode order).

    Packets are decoded one by one so a bad packet is recorded and skipped,
    not the end of the unit; FFmpeg's error log (written from its decoding
    threads too) marks the frames that follow as damaged until the next
    keyframe after the furthest frame decoded or shown so far. Where the
    packets end in an error the decoder is still flushed (its held frames out).

    Frames before `start` are decoded only to be referenced: their packets
    are sent with FFmpeg's skip_frame at NONREF, so the decoder drops the
    ones no other frame needs (most B-frames) unseen. A unit that starts mid-GOP
    then pays for the reference frames before it alone. Where the pts lie
    (`plan.output_order`) a packet's place is not its frame's: nothing is skipped.
    """
    import av

    damaged_until = -1
    furthest = key - 1  # the highest frame index whose packet went in or that came out
    with _open(plan.path, hwaccel) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        if key > 0:
            try:
                with _ffmpeg_log(report):
                    container.seek(int(plan.pts[key]), stream=stream, backward=True, any_frame=False)
            except av.FFmpegError as exc:
                report.messages.append(f"seek to frame {key} failed: {_reason(exc)}")
                return
        packets = _packets(container, stream, report)
        while True:
            frames: list[Any] = []
            with _ffmpeg_log(report) as logged:
                packet: Any = next(packets, _END)
                if packet is _END:
                    break
                sent = _index_of(plan, packet.pts) if packet is not None else None
                furthest = max(furthest, sent if sent is not None else -1)
                skip = "NONREF" if sent is not None and sent < start and not plan.output_order else "DEFAULT"
                if context.skip_frame != skip:
                    context.skip_frame = skip
                try:
                    frames = packet.decode() if packet is not None else context.decode(None)
                except av.FFmpegError as exc:
                    report.messages.append(_reason(exc))
                    damaged_until = max(damaged_until, _next_keyframe(plan, furthest + 1))
            if logged:
                damaged_until = max(damaged_until, _next_keyframe(plan, furthest + 1))
            for frame in frames:
                idx = _index_of(plan, frame.pts)
                if idx is None:
                    continue
                furthest = max(furthest, idx)
                damaged = idx < damaged_until or frame.is_corrupt
                if frame.is_corrupt:
                    damaged_until = max(damaged_until, _next_keyframe(plan, idx + 1))
                yield idx, frame, damaged


_END = object()
_LOG_LOCK = threading.Lock()
_log: list[Any] = []  # FFmpeg's messages, captured for the whole process (PyAV hands each to the innermost capture only)


@contextmanager
def _ffmpeg_log(report: DecodeReport) -> Iterator[list[str]]:
    """For the block: FFmpeg's error messages, added to `report` and to the list yielded (filled when the block ends).

    FFmpeg has one log per process, and PyAV gives each message to the
    capture entered last, so two units decoding in one actor (two in flight)
    would each catch the other's messages, or lose their own. One capture
    serves the process; a block holds a lock, so the messages logged while
    it runs are its own (frames are decoded with slice threads, which log
    before the call returns).
    """
    import av

    with _LOG_LOCK:
        if not _log:
            av.logging.set_level(av.logging.ERROR)  # without a level, FFmpeg's messages never reach Python
            capture = av.logging.Capture(local=False)
            _log.append(capture.__enter__())  # never left: the process's one capture
        logs = _log[0]
        start = len(logs)
        errors: list[str] = []
        try:
            yield errors
        finally:
            errors.extend(msg.strip() for level, _, msg in logs[start:] if level <= av.logging.ERROR)
            del logs[start:]
            report.messages.extend(errors)


def _packets(container: Any, stream: Any, report: DecodeReport) -> Iterator[Any]:
    """Demuxed packets of `stream` (the final empty one flushes the decoder); a broken tail ends them with None (flush)."""
    import av

    try:
        yield from container.demux(stream)
    except av.FFmpegError as exc:
        report.messages.append(_reason(exc))
        yield None


def _index_of(plan: VideoPlan, pts: int | None) -> int | None:
    if pts is None:
        return None
    i = int(np.searchsorted(plan.pts, pts))
    return i if i < plan.frames and plan.pts[i] == pts else None


def _next_keyframe(plan: VideoPlan, index: int) -> int:
    later = plan.keyframes[plan.keyframes >= index]
    return int(later[0]) if len(later) else plan.frames


def _rgb(frame: Any, plan: VideoPlan, reformatter: Any) -> np.ndarray:
    """The frame as upright RGB at the plan's size (a stream that changes resolution is rescaled to its first size).

    `reformatter` is the decoder's: FFmpeg's converter is set up once for its
    frames. `frame.to_ndarray(format=...)` makes a new one per frame, whose
    set-up costs 6 times the conversion (0.54 of 0.63 ms at 360x480), for the
    same bits.
    """
    if (frame.height, frame.width) != (plan.coded_height, plan.coded_width):
        frame = frame.reformat(width=plan.coded_width, height=plan.coded_height)
    return _upright(reformatter.reformat(frame, format="rgb24").to_ndarray(), plan.rotation)


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame by the display matrix's rotation (counter-clockwise degrees)."""
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
