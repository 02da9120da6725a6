from fractions import Fraction

import av
import numpy as np
import pytest
from videos import corrupt, frame_index, write_audio_only, write_empty_video, write_video

from segbatch.errors import InputError
from segbatch.sources.video import DecodeReport, probe_video, read_frames


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "a.mp4", 60, gop=12)


def _sequential(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_plan_counts_frames_times_and_keyframes(h264):
    plan = probe_video(h264)
    assert plan.frames == 60 and (plan.height, plan.width) == (48, 64)
    assert plan.keyframes[0] == 0 and list(plan.keyframes) == list(range(0, 60, 12))
    assert np.allclose(np.diff(plan.times), 1 / 25)


@pytest.mark.parametrize("unit", [1, 5, 7, 12, 16])
def test_units_decode_exactly_like_sequential_decoding(h264, unit):
    plan = probe_video(h264)
    reference = _sequential(h264)
    got = {}
    for start in range(0, plan.frames, unit):
        report = DecodeReport()
        for i, rgb in read_frames(plan, start, min(start + unit, plan.frames), report):
            assert i not in got, f"frame {i} decoded twice"
            got[i] = rgb
        assert report.ok
    assert sorted(got) == list(range(60))
    for i in range(60):
        assert np.array_equal(got[i], reference[i]), f"frame {i} differs from sequential decoding"
        assert frame_index(got[i]) == i


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
