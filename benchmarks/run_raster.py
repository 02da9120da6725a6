"""Peak memory vs raster size, and the stitch's share of the time, for `segbatch run` on GeoTIFFs.

    python benchmarks/run_raster.py [--sizes 5000,20000] [--samples 2] [--width 0.25] [--tile 512] [--overlap 64]

Generates 3-band uint8 tiled GeoTIFFs (DEFLATE) of each size, runs `segbatch
run` on each as a subprocess with a small untrained SegNet-Basic, and prints
the peak resident memory of the whole process tree (driver, Ray, actors,
stitch tasks) and the inference and stitch seconds the store records.
Targets: peak under 3 GB and independent of size; stitch under 15% of inference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import zarr
from rasterio.transform import Affine
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from run_video import measure  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
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
                f"stitch {summary['stitch_seconds']:.0f} s ({100 * share:.1f}% of inference), peak RSS of all processes {peak / 2**20:.0f} MiB"
            )
            print(json.dumps({"side": side, "seconds": round(seconds, 1), "peak_mib": round(peak / 2**20), **summary}))
            raster.unlink()


if __name__ == "__main__":
    main()
