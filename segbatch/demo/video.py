"""Encoding demo scenes as a video: the quickstart's input and the benchmarks'."""

from __future__ import annotations

from pathlib import Path

from segbatch.atomic import atomic_path
from segbatch.demo.scenes import render_video


def write_demo_video(path: Path, frames: int, height: int, width: int, fps: int = 25, seed: int = 0, speed: float = 0.5, gop: int | None = None) -> Path:
    """H.264 (yuv420p, so even sizes are rounded down) of the camera driving `speed` metres per frame; written atomically.

    `gop`: frames between keyframes (x264's default, 250, when None; cameras write 1-2 s).
    """
    import av

    height, width = height - height % 2, width - width % 2
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "20", **({"g": str(gop)} if gop else {})}
            for image, _ in render_video(seed, frames, height, width, speed=speed):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path
