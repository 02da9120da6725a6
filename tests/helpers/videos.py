"""Seeded generators of test videos whose pixels encode their frame index.

Each frame shows its index as 12 bits, one 8x8 black or white block per bit
along the top rows (robust to lossy codecs), over a background that also
changes with the index. `frame_index(rgb)` reads the number back, so a test can
prove no frame was lost, duplicated or shifted.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 12
BLOCK = 8


def encode_index(index: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (40 + (index * 7) % 150, 90, 140)
    img[BLOCK * 2 :] = np.clip(img[BLOCK * 2 :].astype(int) + rng.integers(-20, 20, (height - BLOCK * 2, width, 3)), 0, 255)
    for bit in range(BITS):
        row, col = divmod(bit, width // BLOCK)
        img[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = 255 if (index >> bit) & 1 else 0
    return img


def frame_index(rgb: np.ndarray) -> int:
    width = rgb.shape[1]
    value = 0
    for bit in range(BITS):
        row, col = divmod(bit, width // BLOCK)
        block = rgb[row * BLOCK + 2 : (row + 1) * BLOCK - 2, col * BLOCK + 2 : (col + 1) * BLOCK - 2]
        value |= int(block.mean() > 127) << bit
    return value


def write_video(
    path: Path,
    frames: int,
    height: int = 48,
    width: int = 64,
    codec: str = "libx264",
    rate: int = 25,
    gop: int = 12,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: float | None = None,
    bframes: bool = True,
    muxer_options: dict[str, str] | None = None,
) -> Path:
    """Write `frames` index-encoded frames; `pts` (in `time_base`) gives variable frame timing.

    `muxer_options` go to the container's muxer, e.g. {"movflags": "faststart"}
    (MP4 with its index before the frames).
    """
    with av.open(str(path), "w", options=muxer_options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"bf": "2" if bframes else "0", "preset": "ultrafast", "crf": "18"}
        elif codec == "libx265":
            stream.options = {"x265-params": "log-level=error", "preset": "ultrafast", "crf": "18"}
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(encode_index(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_understated_reorder(path: Path, frames: int, gop: int = 12) -> Path:
    """An MPEG-2 video with B-frames whose sequence extension claims low_delay (no B-frames).

    FFmpeg's decoder believes it and hands frames out in decode order (0, 3,
    1, 2, 6, 4, 5 ...), each with its own pts: what decoders do on any stream
    that understates its reorder depth, or does not state it (phone and camera
    H.264), until they notice.
    """
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 2
        stream.options = {"qscale": "2"}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(encode_index(i, 48, 64), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    flipped = 0
    at = data.find(b"\x00\x00\x01\xb5")
    while at >= 0:
        if data[at + 4] >> 4 == 1:  # a sequence extension: low_delay is the first bit of its sixth byte
            data[at + 9] |= 0x80
            flipped += 1
        at = data.find(b"\x00\x00\x01\xb5", at + 4)
    assert flipped, "no MPEG-2 sequence extension found"
    path.write_bytes(bytes(data))
    return path


def write_pts_equal_dts(path: Path, frames: int, gop: int = 12, open_gop: bool = False, tick: int = 512) -> Path:
    """H.264 with B-frames muxed the way some camera muxers do it: pts == dts on every packet (no composition offsets).

    The frames are encoded into a raw elementary stream (Annex B, no
    timestamps), then muxed into `path` with packet n stamped n * `tick` (in
    1/12800 s, 25 fps at 512) as both pts and dts. The decoder still shows the
    frames in presentation order, each carrying its packet's decode-order
    time, so the times of its output go back and forth. `open_gop` makes
    x264 cut open GOPs: the B-frames decoded after a keyframe are shown before
    it (and reference the GOP before).
    """
    raw = path.with_name(path.name + ".h264")
    with av.open(str(raw), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"bf": "2", "preset": "ultrafast", "crf": "18", **({"x264-params": "open-gop=1"} if open_gop else {})}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(encode_index(i, 48, 64), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    time_base = Fraction(1, 12800)
    with av.open(str(raw), format="h264") as src, av.open(str(path), "w") as out:
        stream = src.streams.video[0]
        dst = out.add_stream_from_template(stream)
        dst.time_base = time_base
        n = 0
        for packet in src.demux(stream):
            if packet.size == 0:
                continue
            packet.pts = packet.dts = n * tick
            packet.time_base, packet.stream = time_base, dst
            out.mux(packet)
            n += 1
    raw.unlink()
    assert n == frames, f"{n} packets for {frames} frames"
    return path


def _mux_silence(out, frames: int) -> None:
    """Add an MP2 audio stream to `out` holding `frames` frames of silence."""
    stream = out.add_stream("mp2", rate=44100)
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 44100, i * 1152
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        _mux_silence(out, 10)
    return path


def write_empty_video(path: Path) -> Path:
    """A container with a video stream and no frames (only its audio stream has data)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _mux_silence(out, 1)
    return path


def corrupt(path: Path, start_fraction: float, length: int, seed: int = 0) -> Path:
    """Overwrite `length` bytes from `start_fraction` of the file with random bytes (packets that still demux)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * start_fraction)
    data[at : at + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
