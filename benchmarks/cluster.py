"""The driver's cost per work unit, and `segbatch run` on 1 and 2 simulated nodes.

    python -m benchmarks.cluster driver [--units 4000] [--actors 4]
    python -m benchmarks.cluster nodes [--frames 96] [--size 120x160] [--samples 2]

driver: the engine's actor pool (segbatch.engine.pool.ActorPool: scheduling,
in-flight bookkeeping, retries, progress) over units whose worker does nothing,
so all that is measured is the driver. Reported: the driver's CPU time and wall
time per unit, plus the finalising read of the ledger per unit. Target: < 5 ms
per unit, so that 100 GPUs at 100 frames/s (10,000 frames/s; 160 units/s at 64
frames per unit) are not driver-bound.

nodes: the same `segbatch run` (tiny model, synthetic video) against a
ray.cluster_utils.Cluster with one worker node of 2 CPUs, then two nodes of
1 CPU each. This machine has 2 cores either way, so it shows the overhead of
spreading over nodes, not a speed-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class NoopWorker:
    """A worker that does no work: what remains is the driver's and Ray's cost per unit."""

    def __init__(self, job: object) -> None:
        self.job = job

    def device_name(self) -> str:
        return "cpu"

    def process(self, unit: int) -> dict[str, int]:
        return {"unit": unit}


def driver(units: int, actors: int) -> None:
    import logging

    import ray

    from segbatch.engine.pool import ActorPool
    from segbatch.lease import Lease, claim
    from segbatch.store import StoreLayout, base_attrs, create_store, finished_units, record_unit

    ray.init(address="local", num_cpus=actors, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)

    def run_all(count: int) -> int:
        with ActorPool(NoopWorker, None, actors=actors, cpus=1, gpus=0) as pool:
            for unit in range(count):
                pool.submit(unit)
            done = 0
            while pool.has_next():
                pool.get_next()
                done += 1
        return done

    run_all(actors * 4)  # warm the actors up
    cpu, wall = time.process_time(), time.perf_counter()
    done = run_all(units)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ray.shutdown()
    assert done == units
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # the ledger the driver reads to finalise (and to resume)
        layout = StoreLayout(dims=("frame", "y", "x"), shape=(units, 1, 1), chunks=(1, 1, 1), num_classes=2, units=units, outputs=("labels",))
        lease = Lease.new()
        model = {"classes": ["a", "b"]}
        claim(Path(tmp) / "s.zarr", lease)
        root = create_store(Path(tmp) / "s.zarr", layout, base_attrs({"path": "-", "kind": "video"}, model, 1, 0, {}, lease.run) | {"unit_frames": 1})
        for u in range(units):
            record_unit(root, u, {"unit": u, "frames": [u, u + 1], "seconds": 1.0, "run": lease.run})
        start = time.perf_counter()
        assert len(finished_units(root)) == units
        ledger = time.perf_counter() - start
    per = 1e3 / units
    print(f"{units} units on {actors} no-op actors: driver CPU {cpu * per:.3f} ms/unit, wall {wall * per:.3f} ms/unit ({units / wall:.0f} units/s)")
    print(f"finalise: reading the ledger {ledger / units * 1e3:.3f} ms/unit; total driver time {(cpu + ledger) / units * 1e3:.3f} ms/unit (target < 5)")


def nodes(frames: int, size: str, samples: int) -> None:
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from segbatch.demo.video import write_demo_video
    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    h, w = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        video = write_demo_video(Path(tmp) / "drive.mp4", frames, h, w)
        model = tiny_segnet_basic(11)
        ckpt = Path(tmp) / "tiny.pt"
        save_checkpoint(model, ckpt, ModelSpec.of(model))
        for layout in ([2], [1, 1]):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for cpus in layout:
                cluster.add_node(num_cpus=cpus)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
            out = Path(tmp) / f"run{len(layout)}.zarr"
            cmd = [sys.executable, "-m", "segbatch", "run", "--input", str(video), "--out", str(out), "--model", str(ckpt)]
            cmd += ["--samples", str(samples), "--address", cluster.address, "--quiet"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            ray.shutdown()
            cluster.shutdown()
            print(f"{len(layout)} node(s) {layout} CPUs: {frames} frames in {seconds:.1f} s = {frames / seconds:.2f} frames/s (driver start-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("driver")
    d.add_argument("--units", type=int, default=4000)
    d.add_argument("--actors", type=int, default=4)
    n = sub.add_parser("nodes")
    n.add_argument("--frames", type=int, default=96)
    n.add_argument("--size", default="120x160")
    n.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    if args.what == "driver":
        driver(args.units, args.actors)
    else:
        nodes(args.frames, args.size, args.samples)


if __name__ == "__main__":
    main()
