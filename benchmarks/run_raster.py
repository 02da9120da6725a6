"""Peak memory and disk vs raster size, and what the stitch adds to a run's wall time, for `segbatch run` on GeoTIFFs.

    python -m benchmarks.run_raster [--sizes 3000,6000] [--samples 2] [--width 0.25] [--tile 512] [--overlap 64] [--no-compare]

Generates 3-band uint8 tiled GeoTIFFs (DEFLATE) of each size and runs
`segbatch run` on each as a subprocess with a small untrained SegNet-Basic:
the peak resident memory of the whole process tree (driver, Ray, actors,
stitch tasks), the peak disk of `tiles/` (sampled every 0.2 s), and what the
store records (inference seconds, the stitch after inference, stitch task
seconds and the share of them that overlapped inference, the most tiles kept
at once). Then, unless --no-compare, the same raster once more in this
process with the stitch left out (a source whose stitcher does nothing), and
once with it, both timed on the same warm Ray runtime: the ratio of the two
wall times is what stitching costs a run (target: within 1.1x).
Targets: peak memory flat in raster size; tiles/ bounded by the tile rows in flight.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.transform import Affine
from rasterio.windows import Window

from benchmarks.run_video import measure


def make_raster(path: Path, side: int, block: int = 1024) -> Path:
    """Smooth fields plus noise, written block by block (never the whole raster in memory)."""
    rng = np.random.default_rng(0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=side,
        width=side,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10, 0, 300000, 0, -10, 5000000),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="YES",
    ) as ds:
        for r in range(0, side, block):
            for c in range(0, side, block):
                h, w = min(block, side - r), min(block, side - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                base = np.stack([np.sin(xx / 97.0 + k) * np.cos(yy / 131.0 - k) for k in range(3)])
                data = np.clip(128 + 90 * base + rng.normal(0, 12, (3, h, w)), 1, 255).astype(np.uint8)
                ds.write(data, window=Window(c, r, w, h))
    return path


class _DiskPeak:
    """The largest size `folder` reached while sampled (every 0.2 s) in a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
            except OSError:  # files deleted while listed
                continue
            self.peak = max(self.peak, size)


def compare(raster: Path, ckpt: Path, d: Path, args: argparse.Namespace) -> dict[str, float]:
    """Wall seconds of the run in this process with and without the stitch (same warm Ray runtime, inference alone first)."""
    import ray

    from segbatch.engine.job import RunConfig
    from segbatch.engine.raster import RasterSource
    from segbatch.engine.run import run
    from segbatch.inputs import one_input

    class InferenceOnly(RasterSource):
        """The raster source with no stitch: what inference alone costs."""

        def begin(self, root: Any, done: Any, owner: Any) -> None:
            return None

        def unit_done(self, unit: Any, entry: Any) -> None:
            return None

        def finish(self, root: Any, units: Any, ran: Any, summary: Any, owner: Any) -> None:
            return None

    d.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # its own, never a recorded cluster
    try:
        out: dict[str, float] = {}
        for name, source in (("inference_only", InferenceOnly), ("with_stitch", RasterSource)):
            cfg = RunConfig(input=raster, out=d / f"{name}.zarr", model=ckpt, samples=args.samples, tile=args.tile, overlap=args.overlap, quiet=True)
            started = time.perf_counter()
            run(cfg, [one_input(raster)], source)
            out[name] = time.perf_counter() - started
        return out
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3000,6000")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--no-compare", action="store_true", help="skip the in-process runs with and without the stitch")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        d = Path(tmp)
        ckpt = d / "small.pt"
        subprocess.run(
            [sys.executable, "-m", "segbatch", "model", "init", "--arch", "segnet-basic", "--classes", "11", "--width", str(args.width), "--out", str(ckpt)],
            check=True,
            capture_output=True,
        )
        for side in (int(s) for s in args.sizes.split(",")):
            raster = make_raster(d / f"r{side}.tif", side)
            out = d / f"r{side}.zarr"
            with _DiskPeak(out / "tiles") as disk:
                seconds, peak = measure(
                    [
                        sys.executable,
                        "-m",
                        "segbatch",
                        "run",
                        "--input",
                        str(raster),
                        "--out",
                        str(out),
                        "--model",
                        str(ckpt),
                        "--samples",
                        str(args.samples),
                        "--tile",
                        str(args.tile),
                        "--overlap",
                        str(args.overlap),
                        "--quiet",
                    ]
                )
            summary = zarr.open_group(str(out), mode="r").attrs["segbatch"]["summary"]
            share = summary["stitch_seconds"] / summary["inference_seconds"]
            print(
                f"{side}x{side}: {seconds:.0f} s end to end, {summary['tiles']} tiles, inference {summary['inference_seconds']:.0f} s, "
                f"stitch after it {summary['stitch_seconds']:.1f} s ({100 * share:.1f}% of inference; {summary['stitch_task_seconds']:.1f} s of tasks, "
                f"{100 * summary['stitch_overlap']:.0f}% overlapped), peak RSS of all processes {peak / 2**20:.0f} MiB, "
                f"tiles/ at most {summary['tiles_peak']} tiles, {disk.peak / 2**20:.0f} MiB on disk"
            )
            figures = {"side": side, "seconds": round(seconds, 1), "peak_mib": round(peak / 2**20), "tiles_disk_peak_mib": round(disk.peak / 2**20), **summary}
            if not args.no_compare:
                walls = compare(raster, ckpt, d / f"cmp{side}", args)
                ratio = walls["with_stitch"] / walls["inference_only"]
                print(f"  in process: inference alone {walls['inference_only']:.1f} s, with the stitch {walls['with_stitch']:.1f} s: {ratio:.3f}x")
                figures |= {"walls": {k: round(v, 2) for k, v in walls.items()}, "stitch_cost": round(ratio, 3)}
            print(json.dumps(figures))
            raster.unlink()


if __name__ == "__main__":
    main()
