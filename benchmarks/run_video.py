"""End-to-end `segbatch run` on video against model-only throughput, and peak memory vs video length.

    python -m benchmarks.run_video throughput [--frames 300] [--size 360x480] [--input VIDEO] [--samples 8] [--batch-size 4] [--model CKPT]
    python -m benchmarks.run_video memory [--short 200] [--long 2000] [--size 360x480] [--samples 1] [--model CKPT]

throughput: the same frames, samples, batch size and frame size, measured in one
run: (a) model only, frames decoded beforehand, one process using every core;
(b) `segbatch run` as a user runs it (a subprocess: Ray start-up, decoding,
writing the store included). Target: (b) >= 0.95 x (a).

memory: peak resident memory of every process of the run (driver, Ray's own
processes, actors), sampled every 0.1 s, for a short and a long video.
Target: long within 1.2 x short.

The videos are made by the demo generator (camera moving down a street) and
encoded with H.264; the default model is the built-in demo model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import torch

from segbatch.demo.model import demo_checkpoint_path
from segbatch.demo.video import write_demo_video
from segbatch.mc import derive_seed, mc_predict
from segbatch.model import load_checkpoint


def model_only_fps(video: Path, ckpt: Path, samples: int, batch: int) -> float:
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    model = load_checkpoint(ckpt).model
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    for lo in range(0, len(frames), batch):
        x = torch.from_numpy(np.stack(frames[lo : lo + batch])).permute(0, 3, 1, 2).float().div_(255)
        mc_predict(model, x, samples=samples, seed=[derive_seed(0, i) for i in range(lo, lo + len(x))])
    return len(frames) / (time.perf_counter() - start)


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants (Ray's raylet, GCS and workers are the driver's)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS of the whole process tree of one command (sampled every 0.1 s)."""
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {err.strip()}")
    return seconds, peak


def run_segbatch(video: Path, out: Path, ckpt: Path, samples: int, batch: int) -> tuple[float, int]:
    """Wall seconds and peak tree RSS of one `segbatch run` subprocess."""
    return measure(
        [
            sys.executable,
            "-m",
            "segbatch",
            "run",
            "--input",
            str(video),
            "--out",
            str(out),
            "--model",
            str(ckpt),
            "--samples",
            str(samples),
            "--batch-size",
            str(batch),
            "--quiet",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["throughput", "memory"])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--short", type=int, default=200)
    ap.add_argument("--long", type=int, default=2000)
    ap.add_argument("--size", default="360x480")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--model", type=Path, default=demo_checkpoint_path())
    ap.add_argument("--input", type=Path, help="throughput: this video (e.g. ../shared/samples/bikes.mp4) instead of a generated one")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if args.mode == "throughput":
            samples = 8 if args.samples is None else args.samples
            video = args.input or write_demo_video(d / "v.mp4", args.frames, h, w, seed=3)
            with av.open(str(video)) as c:
                frames, w, h = c.streams.video[0].frames, c.streams.video[0].width, c.streams.video[0].height
            fps_model = model_only_fps(video, args.model, samples, args.batch_size)
            seconds, peak = run_segbatch(video, d / "o.zarr", args.model, samples, args.batch_size)
            fps_e2e = frames / seconds
            print(f"{video.name}: {frames} frames {w}x{h}, {samples} samples, batch {args.batch_size}, {os.cpu_count()} CPUs")
            print(f"model only (pre-decoded, one process): {fps_model:.2f} frames/s")
            print(f"segbatch run end to end:               {fps_e2e:.2f} frames/s ({seconds:.1f} s, Ray start-up included; peak RSS {peak / 2**20:.0f} MiB)")
            print(f"ratio {fps_e2e / fps_model:.3f} (target >= 0.95)")
        else:
            samples = 1 if args.samples is None else args.samples
            peaks = {}
            for n in (args.short, args.long):
                video = write_demo_video(d / f"v{n}.mp4", n, h, w, seed=3)
                seconds, peaks[n] = run_segbatch(video, d / f"o{n}.zarr", args.model, samples, args.batch_size)
                print(f"{n} frames {w}x{h}: {seconds:.1f} s, peak RSS of all processes {peaks[n] / 2**20:.0f} MiB")
            print(f"ratio long/short {peaks[args.long] / peaks[args.short]:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
