"""What a unit costs on object storage: requests per unit, chunk-write MB/s, and the driver's ledger reads at 10,000 units.

    python -m benchmarks.object_store [--frames 256] [--size 120x160] [--samples 1] [--units 10000] [--work DIR]

Against an S3-protocol server on loopback (moto's server mode, in this
process behind a counting WSGI layer: every request of every process, the
driver's, the actors' and the stitch tasks', is counted by method and by
what it touches):

requests: one `segbatch run` of a video (index-encoded, H.264, a tiny
segnet-basic) writing s3://bench/video.zarr, one actor. Requests per unit:
lease reads and writes (the fence and the heartbeat), array chunks, ledger
entries, metadata. MB/s: the bytes of array-chunk PUTs over the actors'
`write` stage seconds (the ledger's), what one writer achieves.

ledger: a store of --units units (a video layout of one-frame chunks, every
ledger entry written as a worker writes it, no pixels) on the server; the
seconds the driver takes to read the whole ledger as `--resume` and
`verify` do (segbatch.store.finished_units) and for `segbatch info`.

Loopback requests cost ~1 ms; a region's S3 costs 10-50 ms a request, so
the request counts are the figures to carry over, not the seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from segbatch.cli.main import CONSOLIDATION_WARNING

BUCKET = "bench"
SEGBATCH = str(Path(sys.executable).parent / "segbatch")  # the command a user runs, from this environment


class CountingServer:
    """moto's S3 app behind a WSGI layer that counts requests by (method, what the key is) and the bytes PUT to array chunks."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        from tests.helpers.s3 import free_port

        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.chunk_bytes = 0
        self.lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            what = classify(environ.get("PATH_INFO", ""))
            method = environ.get("REQUEST_METHOD", "")
            with self.lock:
                self.counts[(method, what)] += 1
                if method == "PUT" and what == "chunk":
                    self.chunk_bytes += int(environ.get("CONTENT_LENGTH") or 0)
            return app(environ, start_response)

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, counting, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.chunk_bytes = 0


def classify(path: str) -> str:
    """What a request's key is: the lease, a ledger entry, an array chunk, metadata (zarr.json), a listing, or other."""
    if path.endswith("/lease/zarr.json"):
        return "lease"
    if "/_segbatch/ledger/c/" in path or "/ledger/c/" in path:
        return "ledger"
    if "/c/" in path:
        return "chunk"
    if path.endswith("zarr.json"):
        return "metadata"
    return "listing" if path.count("/") <= 1 else "other"


def requests(args: argparse.Namespace, server: CountingServer, work: Path, env: dict[str, str]) -> dict[str, Any]:
    from segbatch import location
    from segbatch.store import finished_units, open_store
    from tests.helpers.videos import write_video

    h, w = (int(v) for v in args.size.split("x"))
    video = write_video(work / "clip.mp4", args.frames, h, w, gop=16)
    model = tiny_model(work)
    out = f"s3://{BUCKET}/video.zarr"
    server.reset()
    started = time.perf_counter()
    cmd = [SEGBATCH, "run", "--input", str(video), "--out", out, "--model", str(model)]
    cmd += ["--samples", str(args.samples), "--actors", "1", "--quiet", "--overwrite"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the run failed: {proc.stderr.strip()[-2000:]}")
    counts, chunk_bytes = dict(server.counts), server.chunk_bytes
    ledger = finished_units(open_store(location.parse(out)))
    write_seconds = sum(float(e.get("stages", {}).get("write", 0.0)) for e in ledger.values())
    return {"units": len(ledger), "frames": args.frames, "wall": wall, "counts": counts, "chunk_bytes": chunk_bytes, "write_seconds": write_seconds}


def ledger_reads(args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """A store of `args.units` units with every ledger entry written, then the driver's reads of it, timed."""
    import numpy as np

    from segbatch import location
    from segbatch.lease import Lease
    from segbatch.owner import Owner
    from segbatch.store import StoreLayout, base_attrs, finished_units, open_store, record_unit

    out = location.parse(f"s3://{BUCKET}/ledger.zarr")
    n = args.units
    layout = StoreLayout(
        dims=("frame", "y", "x"),
        shape=(n, 8, 8),
        chunks=(1, 8, 8),
        num_classes=11,
        units=n,
        outputs=("labels", "entropy", "confidence", "uncertainty"),
        float_dtype="float16",
        coords={"time": (("frame",), np.arange(n, dtype=np.float64), {"units": "s"})},
    )
    lease = Lease.new()
    source = {"path": "/bench.mp4", "kind": "video", "codec": "h264", "frames": n, "declared_frames": n, "height": 8, "width": 8, "rotation": 0}
    source |= {"frame_order": "pts", "time_base": "1/25", "frame_range": [0, n], "demux_error": None}
    model = {"arch": "segnet-basic", "classes": [str(i) for i in range(11)], "palette": [[0, 0, 0]] * 11, "sha256": "0" * 64}
    model |= {"path": "/bench.pt", "dropout": "central", "width": 0.25}
    attrs = base_attrs(source, model, 1, 0, {}, lease.run)
    attrs |= {"fingerprint": "bench", "unit_frames": 1, "resize": None}
    t = time.perf_counter()
    with Owner(out, lease) as owner:
        root = owner.replace(lambda: owner.create(layout, attrs))
        made = time.perf_counter() - t
        t = time.perf_counter()

        def write(unit: int) -> None:
            record_unit(
                root,
                unit,
                {"unit": unit, "frames": [unit, unit + 1], "missing": [], "damaged": [], "messages": [], "run": lease.run, "node": "n", "chunks": {}},
            )

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(write, range(n)))
        entries = time.perf_counter() - t
    t = time.perf_counter()
    done = finished_units(open_store(out))
    read = time.perf_counter() - t
    assert len(done) == n, len(done)
    t = time.perf_counter()
    info = subprocess.run([SEGBATCH, "info", str(out)], env=env, capture_output=True, text=True)
    info_s = time.perf_counter() - t
    if info.returncode != 0:
        raise SystemExit(f"info failed: {info.stderr.strip()[-1000:]}")
    return {"units": n, "create": made, "write_entries": entries, "finished_units": read, "info": info_s}


def tiny_model(work: Path) -> Path:
    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    path = work / "tiny.pt"
    if not path.exists():
        model = tiny_segnet_basic(11)
        save_checkpoint(model, path, ModelSpec.of(model))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--size", default="120x160")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    import logging

    from tests.helpers.s3 import environment

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    warnings.filterwarnings("ignore", message=CONSOLIDATION_WARNING)  # as the CLI does
    with CountingServer() as server, tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **environment(server.port)}
        os.environ.update(environment(server.port))  # this process's own reads (the ledger, the store's attributes)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{server.port}").create_bucket(Bucket=BUCKET)
        r = requests(args, server, work, env)
        units = r["units"]
        print(f"video {args.size}, {r['frames']} frames, {units} units, --samples {args.samples}, 1 actor: {r['wall']:.1f} s end to end")
        print(f"{'requests':<12}" + "".join(f"{m:>8}" for m in ("GET", "PUT", "HEAD", "DELETE")) + f"{'per unit':>10}")
        for what in ("lease", "chunk", "ledger", "metadata", "listing", "other"):
            row = [r["counts"].get((m, what), 0) for m in ("GET", "PUT", "HEAD", "DELETE")]
            if any(row):
                print(f"{what:<12}" + "".join(f"{c:>8}" for c in row) + f"{sum(row) / units:>10.1f}")
        total = sum(r["counts"].values())
        print(f"{'all':<12}{total:>32}{total / units:>10.1f}")
        mb = r["chunk_bytes"] / 1e6
        print(
            f"array chunks: {mb:.1f} MB PUT in {r['write_seconds']:.2f} s of the actors' write stage = {mb / max(r['write_seconds'], 1e-9):.1f} MB/s per writer"
        )
        lr = ledger_reads(args, env)
        print(
            f"ledger of {lr['units']} units: store made in {lr['create']:.1f} s, entries written in {lr['write_entries']:.1f} s (16 threads); "
            f"read whole (--resume, verify) in {lr['finished_units']:.1f} s; `segbatch info` {lr['info']:.1f} s"
        )
        print(json.dumps({"requests": {f"{m} {w}": c for (m, w), c in sorted(r["counts"].items())}, "ledger": lr}))


if __name__ == "__main__":
    main()
