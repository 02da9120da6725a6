"""Many inputs in one job: throughput against one long video, driver planning cost, and a Ray Data pipeline side by side.

    python -m benchmarks.many_inputs throughput [--videos 1000] [--frames 8] [--size 240x320] [--samples 2] [--work DIR]
    python -m benchmarks.many_inputs plan [--inputs 10000] [--distinct 8] [--work DIR]
    python -m benchmarks.many_inputs raydata [--videos 1000] [--frames 8] [--size 240x320] [--samples 2] [--work DIR]
    python -m benchmarks.many_inputs all --quick          # every measurement at small sizes (50 videos, 500 plan inputs)

throughput: N short videos (index-encoded, H.264) as one `segbatch run --input
FOLDER` job, against one video holding the same N x frames, same settings (a
tiny segnet-basic, width 0.25, 11 classes; --samples 2; default actors and batch
size; --quiet). Each is a `segbatch run` subprocess timed end to end, Ray
start-up, planning, decoding and writing the store included. Target: many /
single >= 0.8.

plan: the driver's cost of a job of N inputs before any unit runs, in a fresh
subprocess (so nothing else inflates its peak memory): expand_inputs of a
manifest, planning every input (engine.groups.plan with VideoSource: each
file's header), creating the job root, and each input's layout and units
(engine.groups.prepare), as engine.run does them; no Ray. Reported per input in ms
(target < 20 ms). Then the groups themselves (a Zarr store per input,
engine.groups.Creator), which a real job creates in background threads while
the actors work, timed apart. The N inputs are distinct hard links to a few
real small videos (the expansion refuses a file listed twice). Also the
process's peak RSS (getrusage maxrss; target < 1 GB), with the import and
checkpoint baseline apart.

raydata: the same N short videos through a Ray Data pipeline (from_items of
the paths, flat_map decoding each file's frames with PyAV in tasks that hold
no CPU (else, with every CPU held by the actors, they never run: Ray Data does
not fuse them into the actors), map_batches on an actor pool of one actor per
CPU (one torch thread each, as segbatch's) running mc_predict with per-frame seeds as
segbatch seeds them, labels and uncertainty consumed by the driver with
iter_batches and written to numpy memmaps), and segbatch's many-input job on
the same files; both subprocesses timed end to end, frames/s of each. Ray Data
needs pyarrow, which segbatch does not: `pip install pyarrow` for this
measurement only. Note segbatch writes more: four arrays (labels, entropy,
confidence, uncertainty) in a Zarr group per input, a ledger, and attributes.

`all` runs the many-input job once and reports it in both throughput and
raydata. The inputs are written once to --work (default a temporary folder)
and reused while they are there; stores are deleted before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def write_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """The tests' index-encoded H.264 video, written aside and renamed into place (an interrupted run leaves no torn file)."""
    from tests.helpers.videos import write_video as write

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp, frames, *size)
    tmp.replace(path)
    return path


def tiny_model(work: Path) -> Path:
    """The tiny checkpoint every measurement runs (made once, with the CLI a user would use)."""
    path = work / "tiny.pt"
    if not path.exists():
        cmd = [sys.executable, "-m", "segbatch", "model", "init", "--arch", "segnet-basic", "--classes", "11", "--width", "0.25", "--out", str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
    return path


def short_videos(work: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    """`count` short videos in work/videos-<frames>f-<H>x<W>/, kept for the next run; extra ones from a larger run are left out."""
    folder = work / f"videos-{frames}f-{size[0]}x{size[1]}-n{count}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:05d}.mp4" for i in range(count)]
    for path in paths:
        if not path.exists():
            write_video(path, frames, size)
    return paths


def long_video(work: Path, frames: int, size: tuple[int, int]) -> Path:
    path = work / f"single-{frames}f-{size[0]}x{size[1]}.mp4"
    return path if path.exists() else write_video(path, frames, size)


_runs: dict[tuple[str, int], tuple[float, str]] = {}  # `all` measures the many-input job once for throughput and raydata


def run_segbatch(spec: str, out: Path, model: Path, samples: int) -> tuple[float, str]:
    """Wall seconds of one `segbatch run` subprocess, and its summary line (stderr)."""
    if (spec, samples) in _runs:
        return _runs[spec, samples]
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "segbatch", "run", "--input", spec, "--out", str(out), "--model", str(model), "--samples", str(samples), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"segbatch run --input {spec} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    _runs[spec, samples] = seconds, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return _runs[spec, samples]


def throughput(args: argparse.Namespace, work: Path) -> None:
    model = tiny_model(work)
    t = time.perf_counter()
    clips = short_videos(work, args.videos, args.frames, args.size)
    single = long_video(work, args.videos * args.frames, args.size)
    prepared = time.perf_counter() - t
    total = args.videos * args.frames
    many_s, many_line = run_segbatch(str(clips[0].parent), work / "many.zarr", model, args.samples)
    single_s, single_line = run_segbatch(str(single), work / "single.zarr", model, args.samples)
    shutil.rmtree(work / "single.zarr", ignore_errors=True)
    size = f"{args.size[0]}x{args.size[1]}"
    print(f"{args.videos} videos x {args.frames} frames {size} vs 1 video x {total} frames; {args.samples} samples, {os.cpu_count()} CPUs")
    print(f"(inputs ready in {prepared:.1f} s, in {work})")
    print(f"{'job':<28}{'frames':>8}{'wall s':>9}{'frames/s':>10}")
    print(f"{'many inputs (one job)':<28}{total:>8}{many_s:>9.1f}{total / many_s:>10.2f}")
    print(f"{'one video':<28}{total:>8}{single_s:>9.1f}{total / single_s:>10.2f}")
    print(f"ratio many/single {single_s / many_s:.3f} (target >= 0.8)")
    print(f"  many:   {many_line}")
    print(f"  single: {single_line}")
    shutil.rmtree(work / "many.zarr", ignore_errors=True)


# --- plan ---


def plan_inputs(work: Path, count: int, distinct: int) -> Path:
    """A manifest of `count` distinct paths: hard links to `distinct` real small videos (8 frames, 48x64)."""
    folder = work / f"plan-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = [work / "plan-sources" / f"src{i}.mp4" for i in range(distinct)]
    sources[0].parent.mkdir(exist_ok=True)
    for i, src in enumerate(sources):
        if not src.exists():
            write_video(src, 8 + i, (48, 64))
    lines = []
    for i in range(count):
        link = folder / f"d{i // 1000:02d}" / f"in{i:05d}.mp4"
        if not link.exists():
            link.parent.mkdir(exist_ok=True)
            os.link(sources[i % distinct], link)
        lines.append(str(link))
    manifest = work / f"plan-{count}.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def plan_child(manifest: str, out: str, model: str, samples: int) -> dict[str, Any]:
    """In a fresh process: expand, plan, create the root and the groups as engine.run does; seconds of each and peak RSS."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    from segbatch.engine.groups import Creator, model_attrs, model_fingerprint, new_states, plan, prepare
    from segbatch.engine.job import RunConfig
    from segbatch.engine.target import Target
    from segbatch.engine.video import VideoSource
    from segbatch.inputs import expand_inputs
    from segbatch.jobstore import new_job_attrs
    from segbatch.lease import Lease
    from segbatch.model.checkpoint import load_checkpoint
    from segbatch.owner import Owner

    ckpt = load_checkpoint(model)
    times["imports_checkpoint"] = time.perf_counter() - t
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    spec = "@" + manifest
    t = time.perf_counter()
    inputs = expand_inputs(spec)
    times["expand"] = time.perf_counter() - t

    cfg = RunConfig(input=spec, out=Path(out), model=Path(model), samples=samples, quiet=True)
    states = new_states(Target(cfg.out, many=True), inputs)
    t = time.perf_counter()
    plan(cfg, ckpt, VideoSource, states)
    times["plan"] = time.perf_counter() - t
    planned = [s for s in states if s.source is not None]
    max_units = sum(s.planned().max_units for s in planned)
    actors = max(1, min(os.cpu_count() or 1, max_units))  # what pool_size gives on a one-node CPU cluster

    kind = inputs[0].kind
    config = model_fingerprint(cfg, ckpt.sha256) | VideoSource.job_options(cfg) | {"input_kind": kind}
    with Owner(cfg.out, Lease.new()) as owner:
        t = time.perf_counter()
        owner.create_job(new_job_attrs(kind, spec, [s.entry() for s in states], model_attrs(ckpt), cfg, config, owner.run))
        times["root"] = time.perf_counter() - t
        t = time.perf_counter()
        prepare(cfg, ckpt, planned, actors, owner)
        times["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        creator = Creator(owner, [s for s in planned if s.status != "failed"])  # a real job creates these beside inference
        while creator:
            creator.ready(block=True)
        creator.close()
        times["groups"] = time.perf_counter() - t
    failed = [s.error for s in states if s.status == "failed"]
    return {
        "inputs": len(inputs),
        "failed": len(failed),
        "first_failure": failed[0] if failed else None,
        "units": sum(len(s.units) for s in states),
        "seconds": times,
        "baseline_rss": baseline,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def plan(args: argparse.Namespace, work: Path) -> None:
    model = tiny_model(work)
    t = time.perf_counter()
    manifest = plan_inputs(work, args.inputs, args.distinct)
    prepared = time.perf_counter() - t
    out = work / "plan.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "_plan_child", "--manifest", str(manifest), "--out", str(out), "--model", str(model), "--samples", str(args.samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"planning failed: {proc.stderr.strip()[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    files = sum(len(f) for _, _, f in os.walk(out))
    shutil.rmtree(out, ignore_errors=True)
    n, s = r["inputs"], r["seconds"]
    driver = s["expand"] + s["plan"] + s["root"] + s["prepare"]
    print(f"{n} inputs (hard links to {args.distinct} videos of 8-{7 + args.distinct} frames, 48x64), {os.cpu_count()} CPUs")
    print(f"(manifest ready in {prepared:.1f} s)")
    print(f"{'step':<34}{'seconds':>9}{'ms/input':>10}")
    rows = [
        ("expand_inputs (@manifest)", s["expand"]),
        ("plan (headers, VideoSource)", s["plan"]),
        ("job root (attrs with every input)", s["root"]),
        ("prepare (layouts, units)", s["prepare"]),
    ]
    for name, sec in rows:
        print(f"{name:<34}{sec:>9.2f}{1000 * sec / n:>10.2f}")
    print(f"{'planning (target < 20 ms/input)':<34}{driver:>9.2f}{1000 * driver / n:>10.2f}")
    groups = s["groups"]
    print(f"{'Creator (a store per input)':<34}{groups:>9.2f}{1000 * groups / n:>10.2f}   created beside inference in a real job")
    print(f"imports + checkpoint (once): {s['imports_checkpoint']:.2f} s")
    print(f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB (target < 1024), of which {r['baseline_rss'] / 2**20:.0f} MiB before expanding (imports, checkpoint)")
    print(f"{r['units']} units planned, {r['failed']} inputs failed{': ' + r['first_failure'] if r['failed'] else ''}; {files} files in the job store")


# --- raydata ---


class Segment:
    """Ray Data's actor: the model loaded once, a batch of frames (uint8 HWC) to labels and uncertainty."""

    def __init__(self, checkpoint: str, samples: int, seed: int) -> None:
        import torch

        from segbatch.model.checkpoint import load_checkpoint

        torch.set_num_threads(1)  # as segbatch's actors: one CPU each
        self.model = load_checkpoint(checkpoint).model
        self.samples, self.seed = samples, seed

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        from segbatch.mc import derive_seed, mc_predict

        x = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2).float().div_(255)
        seeds = [derive_seed(self.seed, int(i)) for i in batch["frame"]]  # per input (run seed, frame index), as segbatch
        res = mc_predict(self.model, x, samples=self.samples, seed=seeds)
        return {
            "input": batch["input"],
            "frame": batch["frame"],
            "labels": res["labels"].numpy(),
            "uncertainty": res["uncertainty"].to(torch.float16).numpy(),
        }


def decode(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One file's frames as rows (what read_videos gives, with the input's number and the frame's index)."""
    import av

    with av.open(row["path"]) as container:
        return [{"input": row["input"], "frame": i, "image": f.to_ndarray(format="rgb24")} for i, f in enumerate(container.decode(video=0))]


def raydata_child(folder: str, out: str, model: str, samples: int, frames: int, batch_size: int) -> dict[str, Any]:
    """In a fresh process: the Ray Data pipeline end to end (ray.init included); frames written and seconds."""
    import numpy as np
    import ray

    start = time.perf_counter()
    paths = sorted(str(p) for p in Path(folder).glob("*.mp4"))
    h, w = frame_size(paths[0])
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter() - start
    n = len(paths) * frames
    labels = np.lib.format.open_memmap(Path(out) / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, h, w))
    uncertainty = np.lib.format.open_memmap(Path(out) / "uncertainty.npy", mode="w+", dtype=np.float16, shape=(n, h, w))
    ds = ray.data.from_items([{"input": i, "path": p} for i, p in enumerate(paths)])
    # decoding tasks hold no CPU: the actors take every CPU, and a decode task that waited for one would never run
    # (Ray Data does not fuse a task op into an actor op here); the OS shares the cores, as in segbatch's actors
    ds = ds.flat_map(decode, num_cpus=0)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = ds.map_batches(Segment, fn_constructor_args=(model, samples, 0), batch_size=batch_size, concurrency=cpus, num_cpus=1, batch_format="numpy")
    written = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows = np.asarray(batch["input"]) * frames + np.asarray(batch["frame"])
        labels[rows] = batch["labels"]
        uncertainty[rows] = batch["uncertainty"]
        written += len(rows)
    labels.flush()
    uncertainty.flush()
    seconds = time.perf_counter() - start
    stats = ds.stats() if written else ""
    ray.shutdown()
    return {"frames": written, "expected": n, "seconds": seconds, "ray_init": started, "stats": stats[-3000:]}


def frame_size(path: str) -> tuple[int, int]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.height, stream.width


def raydata(args: argparse.Namespace, work: Path) -> None:
    model = tiny_model(work)
    clips = short_videos(work, args.videos, args.frames, args.size)
    total = args.videos * args.frames
    seg_s, seg_line = run_segbatch(str(clips[0].parent), work / "many.zarr", model, args.samples)
    shutil.rmtree(work / "many.zarr", ignore_errors=True)
    out = work / "raydata-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [sys.executable, __file__, "_raydata_child", "--folder", str(clips[0].parent), "--out", str(out), "--model", str(model)]
    cmd += ["--samples", str(args.samples), "--frames", str(args.frames), "--batch-size", str(args.batch_size)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rd_s = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the Ray Data pipeline failed: {proc.stderr.strip()[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if r["frames"] != total:
        raise SystemExit(f"the Ray Data pipeline gave {r['frames']} frames of {total}")
    print(f"{args.videos} videos x {args.frames} frames {args.size[0]}x{args.size[1]}; {args.samples} samples, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'pipeline':<44}{'frames':>8}{'wall s':>9}{'frames/s':>10}")
    print(f"{'segbatch run (one job, Zarr group per input)':<44}{total:>8}{seg_s:>9.1f}{total / seg_s:>10.2f}")
    print(f"{'Ray Data (flat_map decode, actor pool, memmap)':<44}{total:>8}{rd_s:>9.1f}{total / rd_s:>10.2f}")
    print(f"segbatch / Ray Data {rd_s / seg_s:.3f}; Ray Data's ray.init + listing took {r['ray_init']:.1f} s")
    print(f"  segbatch: {seg_line}")
    if args.verbose:
        print(r["stats"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["throughput", "plan", "raydata", "all", "_plan_child", "_raydata_child"])
    ap.add_argument("--quick", action="store_true", help="small sizes to check it works: 50 videos, 500 plan inputs")
    ap.add_argument("--videos", type=int, help="short videos (default 1000; --quick 50)")
    ap.add_argument("--frames", type=int, default=8, help="frames per short video")
    ap.add_argument("--size", type=parse_size, default=(240, 320), help="HxW of the videos")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="raydata: frames per model call (segbatch's default --batch-size)")
    ap.add_argument("--inputs", type=int, help="plan: inputs (default 10000; --quick 500)")
    ap.add_argument("--distinct", type=int, default=8, help="plan: real videos the inputs link to")
    ap.add_argument("--work", type=Path, help="where inputs are written and reused (default: a temporary folder, removed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="raydata: print Ray Data's stats")
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "_plan_child":
        print(json.dumps(plan_child(args.manifest, args.out, args.model, args.samples)))
        return
    if args.mode == "_raydata_child":
        print(json.dumps(raydata_child(args.folder, args.out, args.model, args.samples, args.frames, args.batch_size)))
        return
    args.videos = args.videos or (50 if args.quick else 1000)
    args.inputs = args.inputs or (500 if args.quick else 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for mode, measure in (("throughput", throughput), ("plan", plan), ("raydata", raydata)):
            if args.mode in (mode, "all"):
                print(f"== {mode}")
                measure(args, work)


if __name__ == "__main__":
    main()
