"""Peak memory of `segbatch audit --truth --queue` against the store's length: bounded, not growing with the frames.

    python -m benchmarks.audit_memory [--frames 1000,10000] [--size 48x64] [--work DIR]

For each length: an index-encoded H.264 video of that many frames, a
complete video store of it written directly (no model: labels, entropy,
confidence and uncertainty that vary by frame and pixel, chunks of 8
frames), truth as a .npy of (frames, H, W) with a fifth of the frames'
left quarter relabelled. Then `segbatch audit STORE --report R --truth T
--queue Q` in a process of its own; its peak RSS (getrusage of the child)
and wall time are printed per length, and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEGBATCH = str(Path(sys.executable).parent / "segbatch")
FPS = 25.0


def make_store(folder: Path, frames: int, h: int, w: int) -> tuple[Path, Path]:
    """The video, its store (written chunk by chunk: bounded here too) and the truth."""
    import warnings

    from segbatch.cli.main import CONSOLIDATION_WARNING
    from segbatch.store import update_attrs
    from tests.helpers.stores import new_video_store
    from tests.helpers.videos import write_video

    warnings.filterwarnings("ignore", message=CONSOLIDATION_WARNING)  # as the CLI does
    write_video(folder / "clip.mp4", frames, height=h, width=w, gop=25)
    store = folder / "clip.zarr"
    root = new_video_store(store, frames, h, w)  # its source: clip.mp4 beside it
    chunk = 8
    truth = np.lib.format.open_memmap(folder / "truth.npy", mode="w+", dtype=np.uint8, shape=(frames, h, w))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    for lo in range(0, frames, chunk):
        f = np.arange(lo, min(lo + chunk, frames))[:, None, None]
        labels = ((xx // 8 + yy // 8 + f) % 11).astype(np.uint8)
        noise = rng.random(labels.shape)
        root["labels"][lo : lo + len(f)] = labels
        root["uncertainty"][lo : lo + len(f)] = (0.01 + 0.05 * noise * ((f % 97) / 97)).astype(np.float16)
        root["entropy"][lo : lo + len(f)] = (0.2 + noise).astype(np.float16)
        root["confidence"][lo : lo + len(f)] = (0.5 + 0.5 * (1 - noise)).astype(np.float16)
        wrong = (f % 5 == 0) & (xx < w // 4)
        truth[lo : lo + len(f)] = np.where(wrong, (labels + 1) % 11, labels)
    truth.flush()
    update_attrs(root, status="complete")
    return store, folder / "truth.npy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="1000,10000")
    ap.add_argument("--size", default="48x64")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (int(v) for v in args.frames.split(",")):
            folder = (args.work or Path(tmp)) / f"f{frames}"
            folder.mkdir(parents=True, exist_ok=True)
            store, truth = make_store(folder, frames, h, w)
            cmd = [
                SEGBATCH,
                "audit",
                str(store),
                "--report",
                str(folder / "report"),
                "--truth",
                str(truth),
                "--queue",
                str(folder / "queue"),
                "--quiet",
                "--overwrite",
            ]
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _MEASURED, *cmd], capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"the audit of {frames} frames failed: {done.stderr[-2000:]}")
            peaks[frames] = int(done.stdout.split()[-1]) / 1024
            print(f"{frames:>6} frames {args.size}: audit --truth --queue {wall:.1f} s, peak RSS {peaks[frames]:.0f} MiB")
    if len(peaks) > 1:
        first, last = min(peaks), max(peaks)
        print(f"peak RSS {last} vs {first} frames: {peaks[last] / peaks[first]:.2f}x")


# the audit in a child of this child, so getrusage(RUSAGE_CHILDREN) is the audit's alone
_MEASURED = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if done.returncode == 0 else sys.exit(done.returncode))
"""

if __name__ == "__main__":
    main()
