"""`segbatch verify` on a video store: wall time and peak memory, against the store's size.

    python -m benchmarks.verify [--frames 2000] [--size 240x320] [--threads 8] [--keep DIR]

Makes a demo-generator video, segments it with `segbatch run` (the built-in
demo model, --samples 1: the arrays, not the model, are what verify reads),
then runs `segbatch verify --json` in a subprocess and reports its wall time,
the chunks it checked, the bytes of arrays it decoded and its peak RSS
(getrusage of the child). Memory should not grow with the store: verify holds
a few chunks per read thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr

from segbatch.demo.video import write_demo_video


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", default="240x320")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="a folder to keep (and reuse) the video and the store in")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    folder = args.keep or Path(tempfile.mkdtemp(prefix="segbatch-verify-"))
    folder.mkdir(parents=True, exist_ok=True)
    video, store = folder / f"drive-{args.frames}.mp4", folder / f"drive-{args.frames}.zarr"
    if not store.exists():
        write_demo_video(video, args.frames, height, width)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "segbatch", "run", "--input", str(video), "--out", str(store), "--samples", "1", "--quiet"], check=True)
        print(f"segbatch run: {args.frames} frames {width}x{height} in {time.perf_counter() - started:.0f} s")
    root = zarr.open_group(str(store), mode="r")
    decoded = sum(root[n].nbytes for n in ("labels", "uncertainty", "entropy", "confidence"))
    # a fresh parent, so the peak is verify's own (not the earlier run's driver)
    measure = (
        "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps({'wall': time.perf_counter() - t, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'out': out.stdout}))"
    )
    cmd = [sys.executable, "-m", "segbatch", "verify", str(store), "--json", "--threads", str(args.threads)]
    measured = json.loads(subprocess.run([sys.executable, "-c", measure, *cmd], capture_output=True, text=True, check=True).stdout)
    wall, peak_mib, report = measured["wall"], measured["peak_kib"] / 1024, json.loads(measured["out"])
    print(
        f"segbatch verify: {report['chunks_checked']} chunks of {report['units']} units, {decoded / 2**20:.0f} MiB of arrays, "
        f"{wall:.2f} s wall ({report['seconds']:.2f} s checking, {decoded / 2**20 / report['seconds']:.0f} MiB/s), "
        f"peak RSS {peak_mib:.0f} MiB, ok={report['ok']}"
    )


if __name__ == "__main__":
    main()
