import itertools
import threading
from contextlib import contextmanager
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from segbatch.errors import InputError
from segbatch.sources.video import DecodeReport, probe_video, read_frames
from tests.helpers.videos import (
    corrupt,
    encode_index,
    frame_index,
    write_audio_only,
    write_empty_video,
    write_pts_equal_dts,
    write_understated_reorder,
    write_video,
)


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "a.mp4", 60, gop=12)


def _ranges(frames, unit, backward=False):
    """Units of `unit` frames; backward, each range starts where no range read before it ended, so each seeks."""
    ranges = [(start, min(start + unit, frames)) for start in range(0, frames, unit)]
    return ranges[::-1] if backward else ranges


@pytest.fixture
def opened(monkeypatch):
    """Every video the decoding opens (a range going on with a decoder left before it opens none)."""
    from segbatch.sources import video

    paths, real_open = [], video._open

    def counting(path, hwaccel=None):
        paths.append(str(path))
        return real_open(path, hwaccel)

    monkeypatch.setattr(video, "_open", counting)
    return paths


def _sequential(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_plan_counts_frames_times_and_keyframes(h264):
    plan = probe_video(h264)
    assert plan.frames == 60 and (plan.height, plan.width) == (48, 64)
    assert plan.keyframes[0] == 0 and list(plan.keyframes) == list(range(0, 60, 12))
    assert np.allclose(np.diff(plan.times), 1 / 25)


@pytest.mark.parametrize("backward", [False, True], ids=["going-on", "seeking"])
@pytest.mark.parametrize("unit", [1, 5, 7, 12, 16])
def test_units_decode_exactly_like_sequential_decoding(h264, unit, backward, opened):
    plan = probe_video(h264)
    reference = _sequential(h264)
    got = {}
    opened.clear()
    for start, stop in _ranges(plan.frames, unit, backward):
        report = DecodeReport()
        for i, rgb in read_frames(plan, start, stop, report):
            assert i not in got, f"frame {i} decoded twice"
            got[i] = rgb
        assert report.ok
    assert sorted(got) == list(range(60))
    for i in range(60):
        assert np.array_equal(got[i], reference[i]), f"frame {i} differs from sequential decoding"
        assert frame_index(got[i]) == i
    # ranges in order go on with one decoder (it ends with the stream); in reverse each seeks
    assert len(opened) == (len(_ranges(60, unit)) if backward else 1)


def test_variable_frame_rate_keeps_true_times(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 200, 210, 220, 500, 540, 580, 600]
    plan = probe_video(write_video(tmp_path / "vfr.mkv", 10, pts=pts, time_base=tb))
    assert np.allclose(plan.times, np.array(pts) / 1000)
    assert [frame_index(f) for _, f in read_frames(plan, 3, 9)] == [3, 4, 5, 6, 7, 8]


def test_rotated_video_comes_out_upright(tmp_path):
    # a phone held upright tags "rotate=90": the display matrix turns the picture 90 degrees clockwise
    path = write_video(tmp_path / "phone.mp4", 4, height=32, width=64, rotation=-90)
    plan = probe_video(path)
    assert plan.rotation == 270 and (plan.height, plan.width) == (64, 32)
    coded = _sequential(path)[1]
    _, upright = list(read_frames(plan, 1, 2))[0]
    assert np.array_equal(upright, np.rot90(coded, k=-1))
    assert upright[:8, -8:].mean() > 200 or upright[:8, -8:].mean() < 50  # the bit blocks moved from top-left to top-right


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("a.mkv", "libx265"),
        ("a.avi", "mpeg4"),
        ("a.mov", "mpeg4"),
        ("a.webm", "libvpx-vp9"),
        ("a.mkv", "libx264"),
        ("a.ts", "libx264"),
        ("a.mpg", "mpeg2video"),
    ],  # no exact index: seeks may overshoot
)
def test_containers_and_codecs(tmp_path, name, codec):
    path = write_video(tmp_path / name, 40, codec=codec, gop=10)
    plan = probe_video(path)
    assert plan.frames == 40
    reference = _sequential(path)
    for start in range(0, 40, 6):
        report = DecodeReport()
        got = list(read_frames(plan, start, min(start + 6, 40), report))
        assert report.ok, report
        assert [i for i, _ in got] == list(range(start, min(start + 6, 40)))
        for i, rgb in got:
            assert frame_index(rgb) == i and np.array_equal(rgb, reference[i])


def test_odd_frame_size(tmp_path):
    with av.open(str(tmp_path / "odd.mkv"), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 65, 47, "yuv444p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((47, 65, 3), i * 40, np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    plan = probe_video(tmp_path / "odd.mkv")
    frames = list(read_frames(plan, 0, 5))
    assert (plan.height, plan.width) == (47, 65) and frames[3][1].shape == (47, 65, 3)


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 100)
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(tmp_path / "notes.mp4")
    with pytest.raises(InputError, match="no video stream"):
        probe_video(write_audio_only(tmp_path / "sound.mka"))
    with pytest.raises(InputError, match="zero frames"):
        probe_video(write_empty_video(tmp_path / "empty.mkv"))


def test_truncated_mp4_without_its_index(tmp_path):
    path = write_video(tmp_path / "cut.mp4", 30)  # the index (moov) is written last
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(path)


def test_corrupt_packets_are_reported_not_silent(tmp_path):
    path = corrupt(write_video(tmp_path / "bad.mkv", 60, gop=30), 0.45, 400)
    plan = probe_video(path)
    report = DecodeReport()
    got = [i for i, _ in read_frames(plan, 0, plan.frames, report)]
    assert not report.ok and report.messages
    assert set(got) | set(report.missing) == set(range(plan.frames))
    # damage spreads through the frames that reference the broken one, up to the next keyframe
    assert len(report.damaged) + len(report.missing) > 1
    assert set(report.damaged) | set(report.missing) <= set(range(plan.frames))
    assert not set(range(0, 20)) & (set(report.damaged) | set(report.missing)), "frames before the damage were flagged"


def test_two_units_decoding_in_one_process_keep_their_own_messages(tmp_path):
    """An actor runs two units at once, and FFmpeg has one log per process: each unit's report holds its own errors, no other's."""
    bad = probe_video(corrupt(write_video(tmp_path / "bad.mkv", 60, gop=30), 0.45, 400))
    good = probe_video(write_video(tmp_path / "good.mkv", 60, gop=30))
    bad_report, good_report = DecodeReport(), DecodeReport()
    bad_frames = read_frames(bad, 0, bad.frames, bad_report)
    good_frames = read_frames(good, 0, good.frames, good_report)
    next(bad_frames), next(good_frames)  # both decoding: the good unit started last
    rest = list(bad_frames)  # the bad unit's damage is logged while the good one is mid-way
    assert [i for i, _ in good_frames] == list(range(1, 60))
    assert good_report.ok and not good_report.messages, good_report.messages
    assert not bad_report.ok and bad_report.messages and len(rest) + 1 + len(bad_report.missing) == 60


class _Decoder:
    """A decoder double: frames come out `delay` frames late in presentation order (0: in decode order).

    FFmpeg does this for a stream that does not state, or understates, its
    reorder depth: it sizes its reorder buffer from what the stream claims, and
    hands frames out in decode order until then. Frames whose pts are in `lose`
    never come out.
    """

    def __init__(self, delay, lose=()):
        self.delay, self.lose, self.held = delay, set(lose), []

    def send(self, pts):
        if pts is None:  # flush
            out, self.held = sorted(self.held), []
        else:
            if pts not in self.lose:
                self.held.append(pts)
            out = []
            while len(self.held) > self.delay:
                first = min(self.held[: self.delay + 1])
                self.held.remove(first)
                out.append(first)
        return [self._frame(p) for p in out]

    @staticmethod
    def _frame(pts):
        frame = av.VideoFrame.from_ndarray(encode_index(pts // 10, 48, 64), format="rgb24")
        frame.pts = pts
        return frame


class _Packet:
    def __init__(self, decoder, pts, key, codec=None, referenced=True):
        self.decoder, self.pts, self.dts, self.is_keyframe = decoder, pts, pts, key
        self.size, self.is_discard = (0 if pts is None else 100), False
        self.codec, self.referenced = codec, referenced

    def decode(self):
        if self.codec is not None and self.codec.skip_frame == "NONREF" and not self.referenced:
            self.codec.skipped.append(self.pts // 10)
            return []  # as FFmpeg drops a frame no other frame references
        return self.decoder.send(self.pts)


class _Container:
    """Packets of frames with pts 10 * index in `order` (decode order), `keys` keyframes, decoded by a `_Decoder`."""

    def __init__(self, order, keys, delay, lose=()):
        self.order, self.keys, self.pos = list(order), set(keys), 0
        self.decoder = _Decoder(delay, lose)
        codec = SimpleNamespace(name="fake", height=48, width=64, skip_frame="DEFAULT", skipped=[])
        self.bframes = {f for i, f in enumerate(self.order) if any(g > f for g in self.order[:i])}  # shown before a frame decoded earlier
        self.stream = SimpleNamespace(codec_context=codec, time_base=Fraction(1, 250), frames=len(order), type="video")
        self.streams = SimpleNamespace(video=[self.stream])
        self.format = SimpleNamespace(name="fake")

    def seek(self, ts, stream=None, backward=True, any_frame=False):
        self.pos = max(i for i, f in enumerate(self.order) if f in self.keys and f * 10 <= ts)

    def demux(self, stream=None):
        for f in self.order[self.pos :]:
            yield _Packet(self.decoder, f * 10, f in self.keys, self.stream.codec_context, f not in self.bframes)
        yield _Packet(self.decoder, None, False, self.stream.codec_context)

    def decode(self, stream=None):
        for packet in self.demux(stream):
            yield from packet.decode()


def _decode_order(frames, gop, bframes):
    """Decode order of an IBBP stream: each anchor frame before the B-frames shown before it."""
    order = []
    for g in range(0, frames, gop):
        anchors = list(range(g, min(g + gop, frames), bframes + 1))
        order.append(g)
        for before, anchor in zip(anchors, anchors[1:]):
            order += [anchor, *range(before + 1, anchor)]
        order += range(anchors[-1] + 1, min(g + gop, frames))
    return order


def _fake_video(monkeypatch, order, keys, delay, lose=(), opened=None):
    from segbatch.sources import video

    @contextmanager
    def fake_open(path, hwaccel=None):
        container = _Container(order, keys, delay, lose)
        if opened is not None:
            opened.append(container)
        yield container

    monkeypatch.setattr(video, "_open", fake_open)
    monkeypatch.setattr(video, "_parked", video._Parked(video.PARKED_DECODERS))  # no decoder of another test's fake goes on here
    return probe_video("fake.mp4")


def test_frames_before_a_units_start_that_nothing_references_are_never_decoded(monkeypatch):
    """A unit starting mid-GOP decodes the anchors before it (references) and skips the B-frames there; its own all come out."""
    order = _decode_order(36, 12, 2)
    opened: list[_Container] = []
    plan = _fake_video(monkeypatch, order, range(0, 36, 12), 1, opened=opened)
    opened.clear()
    got = [(i, frame_index(rgb)) for i, rgb in read_frames(plan, 19, 24)]
    assert got == [(i, i) for i in range(19, 24)]
    skipped = opened[-1].stream.codec_context.skipped
    assert skipped == [13, 14, 16, 17]  # the B-frames of 12:19 (anchors 12, 15, 18 are decoded: 19's reference chain)


@pytest.mark.parametrize("backward", [False, True], ids=["going-on", "seeking"])
@pytest.mark.parametrize("delay", [0, 1])
@pytest.mark.parametrize("unit", [1, 4, 5, 12, 36])
def test_frames_out_of_presentation_order_come_out_in_order(monkeypatch, delay, unit, backward):
    order = _decode_order(36, 12, 2)
    assert order[:7] == [0, 3, 1, 2, 6, 4, 5]
    plan = _fake_video(monkeypatch, order, range(0, 36, 12), delay)
    assert plan.frames == 36 and list(plan.keyframes) == [0, 12, 24]
    for start, stop in _ranges(36, unit, backward):
        report = DecodeReport()
        got = [(i, frame_index(rgb)) for i, rgb in read_frames(plan, start, stop, report)]
        assert got == [(i, i) for i in range(start, stop)], f"unit {start}:{stop}"
        assert report.ok, report


def test_a_frame_the_decoder_loses_is_reported_and_the_rest_kept_in_order(monkeypatch):
    order = _decode_order(36, 12, 2)
    plan = _fake_video(monkeypatch, order, range(0, 36, 12), delay=0, lose={50})  # frame 5 never comes out
    report = DecodeReport()
    got = [i for i, rgb in read_frames(plan, 0, 12, report) if frame_index(rgb) == i]
    assert got == [i for i in range(12) if i != 5]
    assert report.missing == [5] and not report.damaged


def test_a_real_stream_decoded_out_of_order_comes_out_in_order(tmp_path):
    for name in ("a.mp4", "a.mkv", "a.ts"):
        path = write_understated_reorder(tmp_path / name, 30, gop=12)
        with av.open(str(path)) as c:  # the decoder really emits frames in decode order
            out = [f.pts for p in c.demux(video=0) for f in p.decode()]
        assert out != sorted(out)
        plan = probe_video(path)
        for unit, backward in itertools.product((5, 12, 30), (False, True)):
            for start, stop in _ranges(30, unit, backward):
                report = DecodeReport()
                got = [(i, frame_index(rgb)) for i, rgb in read_frames(plan, start, stop, report)]
                assert got == [(i, i) for i in range(start, stop)], f"{name} unit {start}:{stop}"
                assert report.ok, report


def test_truncated_faststart_mp4_knows_the_frames_its_index_declares(tmp_path):
    path = write_video(tmp_path / "cut.mp4", 64, gop=12, muxer_options={"movflags": "faststart"})  # index first
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    path.write_bytes(data[: len(data) // 2])
    plan = probe_video(path)
    assert plan.declared == 64 and 0 < plan.frames < 64
    assert plan.demux_error and "truncated" in plan.demux_error and "64" in plan.demux_error
    report = DecodeReport()
    got = [i for i, _ in read_frames(plan, 0, plan.frames, report)]
    assert sorted(set(got) | set(report.missing)) == list(range(plan.frames))

    from segbatch.problems import problem_counts, problem_lines
    from segbatch.sources.video import truncation_problems

    problems = truncation_problems(plan, plan.frames)  # the store covers what the file holds; the rest is a problem
    assert [p["missing"] for p in problems] == [[[plan.frames, 64]]] and problems[0]["reason"] == "truncated"
    assert problem_lines(problems) == [f"frames {plan.frames}:64 missing (truncated: the file's index declares 64 frames, its data holds {plan.frames})"]
    assert problem_counts(problems) == f"{64 - plan.frames} frames missing (the file is truncated)"
    assert truncation_problems(plan, plan.frames - 1) == []  # --frames that stop before the cut: nothing of theirs is missing


def test_frame_order_holds_at_most_the_reorder_depth():
    from segbatch.sources.video import FrameOrder

    order = FrameOrder(2, 9, depth=2)
    out, most = [], 0
    # decode order of an IBBP... stream with frames 5 and 7 lost; 0 and 1 come before the range, 9 and 12 after it
    for i in [0, 3, 1, 2, 6, 4, 9, 8, 12, 10]:
        out += order.put(i, f"f{i}" if i < 9 else None)
        most = max(most, len(order.held))
        if order.done:
            break
    assert order.done and most <= 2
    assert out == [(2, "f2"), (3, "f3"), (4, "f4"), (5, None), (6, "f6"), (7, None), (8, "f8")]
    assert order.put(3, "again") == [] and order.close() == []


def test_frame_order_at_the_end_of_the_stream_releases_what_it_holds():
    from segbatch.sources.video import FrameOrder

    order = FrameOrder(0, 5, depth=3)
    assert order.put(2, "f2") == [] and order.put(0, "f0") == [(0, "f0")]
    assert order.put(0, "f0 again") == [] and order.put(4, "f4") == []
    assert order.close() == [(1, None), (2, "f2"), (3, None), (4, "f4")]


@pytest.fixture(scope="module", params=[("closed.mp4", False), ("open.mp4", True), ("open.mkv", True)], ids=lambda p: p[0])
def pts_equal_dts(request, tmp_path_factory):
    name, open_gop = request.param
    return write_pts_equal_dts(tmp_path_factory.mktemp("camera") / name, 60, gop=12, open_gop=open_gop)


def test_a_file_with_pts_equal_dts_really_lies(pts_equal_dts):
    with av.open(str(pts_equal_dts)) as c:
        packets = [(p.pts, p.dts) for p in c.demux(video=0) if p.size]
    assert len(packets) == 60 and [pts for pts, _ in packets] == sorted(pts for pts, _ in packets)  # the container claims no reordering
    if pts_equal_dts.suffix == ".mp4":  # (Matroska stores no dts: FFmpeg makes them up)
        assert all(pts == dts for pts, dts in packets)
    with av.open(str(pts_equal_dts)) as c:
        out = [(f.pts, frame_index(f.to_ndarray(format="rgb24"))) for f in c.decode(video=0)]
    assert [i for _, i in out] == list(range(60))  # the decoder shows the frames in order ...
    assert [t for t, _ in out] != sorted(t for t, _ in out)  # ... each with a decode-order time


@pytest.mark.parametrize("backward", [False, True], ids=["going-on", "seeking"])
@pytest.mark.parametrize("unit", [1, 5, 8, 12, 13, 60])
def test_frames_of_a_file_with_pts_equal_dts_are_numbered_by_the_decoders_output(pts_equal_dts, unit, backward):
    plan = probe_video(pts_equal_dts)
    assert plan.output_order and plan.frames == 60
    assert np.all(np.diff(plan.times) > 0) and np.allclose(plan.times, np.arange(60) / 25)
    reference = _sequential(pts_equal_dts)
    assert [frame_index(rgb) for rgb in reference] == list(range(60))
    got = {}
    for start, stop in _ranges(60, unit, backward):
        report = DecodeReport()
        frames = list(read_frames(plan, start, stop, report))
        assert [i for i, _ in frames] == list(range(start, stop)), f"unit {start}:{stop}"
        assert report.ok, (start, stop, report)
        got.update(frames)
    for i in range(60):  # every frame once, the very frame a sequential decode gives at that place
        assert np.array_equal(got[i], reference[i]), f"frame {i} differs from sequential decoding"


def test_files_whose_timestamps_hold_keep_numbering_by_pts(h264, tmp_path):
    assert not probe_video(h264).output_order  # B-frames with composition offsets
    assert not probe_video(write_video(tmp_path / "ip.mp4", 10, bframes=False)).output_order  # no B-frames: pts == dts is true
    assert not probe_video(write_understated_reorder(tmp_path / "m2.mkv", 30)).output_order


def test_output_order_numbers_each_group_from_its_keyframe():
    from segbatch.sources.video import VideoPlan, _by_output_order

    plan = VideoPlan("x.mp4", "h264", 48, 64, 0, Fraction(1, 25), np.arange(30), np.array([0, 10, 22]), output_order=True)
    # decode-order places as an open-GOP decoder emits them: 11 and 12 (decoded after keyframe 10) are shown before it;
    # 14 never comes out; decoding started a group early (frames of group 0)
    emitted = [7, 8, 9, 11, 12, 10, 13, 15, 16, 17, 18, 19, 20, 21, 23, 22, 24]
    got = [(i, frame) for i, frame, _ in _by_output_order(plan, 10, ((d, f"packet {d}", False) for d in emitted))]
    assert got[:3] == [(10, "packet 11"), (11, "packet 12"), (12, "packet 10")]
    assert [i for i, _ in got] == [*range(10, 21), 22, 23, 24]  # the lost frame leaves its group's last place (21) empty


def test_a_range_read_on_another_thread_hands_its_decoder_to_the_range_after_it(h264, opened):
    """Two units in flight on an actor: the second waits for the first's decoder rather than seeking again."""
    plan = probe_video(h264)
    opened.clear()
    first = read_frames(plan, 0, 30)
    got = dict([next(first)])  # the first range is being read: the second starts now, on another thread
    after: dict[int, np.ndarray] = {}
    second = threading.Thread(target=lambda: after.update(read_frames(plan, 30, 60)))
    second.start()
    got.update(first)
    second.join()
    got.update(after)
    reference = _sequential(h264)
    assert sorted(got) == list(range(60)) and all(np.array_equal(got[i], reference[i]) for i in range(60))
    assert len(opened) == 1


def test_a_thread_never_waits_for_a_range_it_holds_half_read(h264, opened):
    plan = probe_video(h264)
    opened.clear()
    first = read_frames(plan, 0, 30)
    next(first)
    assert [i for i, _ in read_frames(plan, 30, 60)] == list(range(30, 60))  # seeks: no wait for itself
    assert len(opened) == 2
    first.close()


def test_a_range_with_decoding_trouble_hands_on_no_decoder(tmp_path, opened):
    """Damage may carry past a range's end; a seek from the keyframe before the next range decides it afresh, as always."""
    plan = probe_video(corrupt(write_video(tmp_path / "bad.mkv", 60, gop=30), 0.45, 400))
    report = DecodeReport()
    list(read_frames(plan, 0, 40, report))
    assert not report.ok or report.messages
    opened.clear()
    list(read_frames(plan, 40, 60))
    assert len(opened) == 1  # opened again: the damaged range's decoder was closed


def test_a_video_replaced_in_place_is_decoded_anew(tmp_path, opened):
    path = write_video(tmp_path / "v.mp4", 60, gop=30)
    plan = probe_video(path)
    list(read_frames(plan, 0, 20))
    write_video(path, 60, gop=30, height=32)  # another video at the same path
    replaced = probe_video(path)
    opened.clear()
    assert [rgb.shape for _, rgb in read_frames(replaced, 20, 22)] == [(32, 64, 3)] * 2
    assert len(opened) == 1


def test_a_range_that_lost_a_frame_hands_on_no_decoder(monkeypatch):
    """A seek may retry from an earlier keyframe where a range's frames go missing; a decoder that lost one is not trusted on."""
    opened: list[_Container] = []
    plan = _fake_video(monkeypatch, _decode_order(36, 12, 2), range(0, 36, 12), delay=0, lose={50}, opened=opened)
    opened.clear()
    report = DecodeReport()
    list(read_frames(plan, 0, 12, report))
    assert report.missing == [5]
    assert [i for i, _ in read_frames(plan, 12, 24)] == list(range(12, 24))
    assert len(opened) == 2  # the second range sought


def test_the_last_range_of_a_video_keeps_no_decoder_open(h264):
    from segbatch.sources import video

    plan = probe_video(h264)
    list(read_frames(plan, 48, 60))
    assert not [key for key in video._parked.idle if key[1] == 60]  # no range starts at the end: nothing waits there
