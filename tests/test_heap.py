"""segbatch.heap: a worker's freed buffers are reused, not faulted in from the kernel again for every frame."""

from __future__ import annotations

import os
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


def test_a_local_runtime_lends_its_workers_two_malloc_arenas_unless_the_user_chose() -> None:
    from segbatch.heap import ARENA_VARIABLE, worker_arenas

    with pytest.MonkeyPatch.context() as env:
        env.delenv(ARENA_VARIABLE, raising=False)
        with worker_arenas():
            assert os.environ.get(ARENA_VARIABLE) == ("2" if platform.libc_ver()[0] == "glibc" else None)
        assert ARENA_VARIABLE not in os.environ  # the driver's own environment as it was
        env.setenv(ARENA_VARIABLE, "8")
        with worker_arenas():
            assert os.environ[ARENA_VARIABLE] == "8"
        assert os.environ[ARENA_VARIABLE] == "8"


# a driver of its own: its local runtime's workers, started by ray.init, say what they inherited
WORKER_ARENAS = """
import os
import ray
from segbatch.engine.session import ray_session
with ray_session(None):
    print(ray.get(ray.remote(lambda: os.environ.get("MALLOC_ARENA_MAX", "unset")).remote()))
print(os.environ.get("MALLOC_ARENA_MAX", "unset"))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_the_workers_of_a_runtime_a_run_starts_share_two_malloc_arenas(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MALLOC_ARENA_MAX")}
    out = subprocess.run([sys.executable, "-c", WORKER_ARENAS], capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=300)
    assert out.stdout.split() == ["2", "unset"], out.stderr[-2000:]
