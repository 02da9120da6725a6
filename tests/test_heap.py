"""segbatch.heap: a worker's freed buffers are reused, not faulted in from the kernel again for every frame."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.videos import write_video

# a reader's work per frame: FFmpeg converts it to RGB in a new frame, handed on as a new array; faults counted after 5 frames
DECODE = """
import resource, sys
import av
from segbatch.heap import keep_freed_buffers
if sys.argv[2] == "keep":
    assert keep_freed_buffers()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with av.open(sys.argv[1]) as container:
    convert = av.video.reformatter.VideoReformatter()
    for decoded, frame in enumerate(container.decode(video=0)):
        if decoded == 5:
            before = faults()
        rgb = convert.reformat(frame, format="rgb24").to_ndarray().copy()
print((faults() - before) / (decoded - 4))
"""


def _faults_per_frame(video: Path, mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", DECODE, str(video), mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_frames_converted_one_after_another_reuse_the_memory_freed_before(tmp_path: Path) -> None:
    video = write_video(tmp_path / "street.mp4", 40, height=360, width=480)
    plain = _faults_per_frame(video, "plain")
    if plain < 20:
        pytest.skip(f"this glibc reuses these buffers by itself ({plain:.0f} page faults a frame)")
    kept = _faults_per_frame(video, "keep")
    assert kept < plain / 5, (plain, kept)  # 222 -> 2 a 360x480 frame on the development machine
