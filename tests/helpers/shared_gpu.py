"""A run whose GPU is a stand-in, for `--actors-per-gpu auto` on a cluster with fake GPUs (no CUDA needed).

    python -m tests.helpers.shared_gpu ADDRESS VIDEO STORE FOLDER ACTORS

Runs `segbatch.engine.run.run` with `--actors-per-gpu auto` and a worker
whose model step is a stand-in device that takes no time: the host work is
all there is, so a device fed by one actor idles, and the pool must add
helpers on its node while CPUs remain. Each actor writes a file into FOLDER
once the driver has counted it ready (the pool asks a ready actor for its
placement), naming the GPU ids it uses (CUDA_VISIBLE_DEVICES, as Ray set it
for the owner and as a helper sets it to the owner's). Units after the first
few wait until ACTORS actors are counted (at most WAIT_S), so the run is
still going when the helpers arrive, however slowly a loaded machine starts
them: a signal, not a sleep. (A file written as an actor was constructed let
the units go while its model was still loading, and on a busy machine the
run could end before the driver counted it.) Prints the store's summary as
JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from segbatch.engine.pipeline import PipelineWorker

WAIT_S = 240.0  # a unit waits this long at most for the actors (then the run goes on, and the test fails on the count)
FREE_UNITS = 4  # units that never wait: they let the pool see the device idle


class StandInGPU(PipelineWorker):
    folder = ""
    actors = 0

    def placement(self) -> tuple[str, str]:
        used = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        (Path(self.folder) / f"actor-{os.getpid()}").write_text(json.dumps({"gpus": used, "helper": self.gpus is not None, "node": self.node}))
        return super().placement()

    def predict(self, x: Any, seeds: list[int]) -> dict[str, Any]:
        import torch

        first = x[:, 0]
        out = {"labels": (first * 10).to(torch.uint8)}
        for name in self.step.outputs:
            out[name] = first.to(getattr(torch, self.step.float_dtype))
        return out

    def process(self, unit: Any) -> dict[str, Any]:
        if unit.unit.id >= FREE_UNITS:
            deadline = time.monotonic() + WAIT_S
            while len(list(Path(self.folder).glob("actor-*"))) < self.actors and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().process(unit)


def main() -> None:
    from segbatch.engine.job import RunConfig
    from segbatch.engine.run import run
    from segbatch.engine.video import VideoSource
    from segbatch.inputs import one_input
    from segbatch.store import open_store, store_attrs

    address, video, store, folder, actors = sys.argv[1:6]
    worker = type("StandInGPU", (StandInGPU,), {"folder": folder, "actors": int(actors), "__module__": __name__})  # run as __main__: Ray ships it by value
    cfg = RunConfig(input=video, out=store, samples=1, batch_size=1, address=address, actors_per_gpu=None, quiet=True)
    run(cfg, [one_input(cfg.input)], VideoSource, worker=worker)
    print(json.dumps(store_attrs(open_store(store))["summary"]))


if __name__ == "__main__":
    main()
