"""The worker: holds one model, turns a unit of frames into its own chunks of the store.

Plain Python, so it can be tested without Ray; the driver wraps it in a Ray
actor. Dropout masks are seeded from (run seed, frame index), so a frame's
result does not depend on which actor runs it, in which batch, or on a retry.
`predict_outputs` (model input -> the store's arrays) serves the image worker too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segbatch.engine.job import FrameUnit, VideoJob
from segbatch.errors import InputError
from segbatch.lease import check_fence
from segbatch.mc import derive_seed, mc_predict
from segbatch.sources.video import DecodeReport, check_hwaccel, read_frames
from segbatch.store import NODATA_LABEL, open_store, record_unit, write_region

MAX_MESSAGES = 5


class ModelWorker:
    """What every actor holds: its torch threads, its device (the GPU Ray gave it, else CPU), the model, the store."""

    def __init__(self, checkpoint: str, store: str, threads: int, run: str) -> None:
        import torch

        from segbatch.model.checkpoint import load_checkpoint

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() and _ray_gave_gpu() else "cpu")
        self.cuda = self.device.type == "cuda"
        model = load_checkpoint(checkpoint).model.to(self.device).eval()
        # on GPUs, channels-last feeds cuDNN's tensor-core kernels without layout conversions (same results: tested on CPU)
        self.model = model.to(memory_format=torch.channels_last) if self.cuda else model  # type: ignore[call-overload]
        self.store, self.run = store, run
        self.root = open_store(store, mode="r+")
        self.node = _node_id()
        self.digests: dict[str, str] = {}  # chunk -> digest, of the unit in progress

    def to_device(self, array: np.ndarray) -> Any:
        """A host array as a tensor on the actor's device: through pinned memory with a non-blocking copy on CUDA."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(array))
        if not self.cuda:
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def device_name(self) -> str:
        return str(self.device)

    def write(self, region: list[slice], outputs: dict[str, np.ndarray], digests: bool = True) -> None:
        """Write whole chunks of the unit in progress, fenced: nothing is written once this run no longer owns the store."""
        check_fence(self.store, self.run)
        written = write_region(self.root, region, outputs)
        if digests:
            self.digests.update(written)

    def record(self, unit: int, stats: dict[str, Any]) -> None:
        """The unit's ledger entry, after its chunks (fenced too): its run, node, and the digest of every chunk it wrote."""
        check_fence(self.store, self.run)
        record_unit(self.root, unit, {**stats, "node": self.node, "run": self.run, "chunks": dict(sorted(self.digests.items()))})
        self.digests = {}


class UnitWorker(ModelWorker):
    """Segments units of a video job; one per Ray actor, model loaded once."""

    def __init__(self, job: VideoJob) -> None:
        super().__init__(job.checkpoint, job.store, job.threads, job.run)
        self.job = job
        require_readable(job.plan.path)
        if job.hwaccel:
            check_hwaccel(job.plan, job.hwaccel)  # on the node that will decode: its GPU, its FFmpeg

    def process(self, unit: FrameUnit) -> dict[str, Any]:
        """Segment frames [unit.start, unit.stop), write each of its chunks when full, then the unit's ledger entry.

        A unit spans at least a GOP (one seek, no frame decoded twice) but holds
        only one chunk of outputs in memory at a time.
        """
        started = time.perf_counter()
        self.digests = {}
        job = self.job
        report = DecodeReport()
        chunk: _ChunkBuffer | None = _ChunkBuffer(self, unit.start, min(unit.start + job.chunk_frames, unit.stop))
        for indices, batch in _batches(read_frames(job.plan, unit.start, unit.stop, report, job.hwaccel), job.batch_size):
            result = self._predict(batch, indices)
            for j, i in enumerate(indices):
                while chunk is not None and i >= chunk.stop:
                    chunk = chunk.flush_and_next(unit.stop)
                assert chunk is not None, f"frame {i} is outside unit {unit.id}"  # read_frames yields [start, stop) only
                chunk.put(i, {name: values[j] for name, values in result.items()})
        while chunk is not None:  # the rest, frames that never decoded included (fill values)
            chunk = chunk.flush_and_next(unit.stop)
        stats = {
            "unit": unit.id,
            "frames": [unit.start, unit.stop],
            "missing": index_ranges(report.missing),
            "damaged": index_ranges(report.damaged),
            "messages": list(dict.fromkeys(report.messages))[:MAX_MESSAGES],
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.record(unit.id, stats)
        return stats

    def _predict(self, frames: list[np.ndarray], indices: list[int]) -> dict[str, np.ndarray]:
        job = self.job
        x = self.to_device(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)
        seeds = [derive_seed(job.seed, i) for i in indices]
        return predict_outputs(self.model, x, seeds, job.samples, job.resize, job.outputs, job.float_dtype, job.precision)


def predict_outputs(
    model: Any,
    x: Any,
    seeds: list[int],
    samples: int,
    resize: tuple[int, int] | None,
    outputs: tuple[str, ...],
    float_dtype: str,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """The store's arrays for a batch `x` (B, C, H, W floats in [0, 1]), as numpy, one seed per item.

    With `resize` the model runs at that size and its outputs come back to
    (H, W): probabilities bilinear, then argmax; entropy from the resampled
    probabilities; variance and the mean per-sample entropy (for MI) bilinear.
    """
    import torch
    import torch.nn.functional as F

    from segbatch.mc import class_entropy

    size = x.shape[-2:]
    if resize is not None:
        x = F.interpolate(x, size=resize, mode="bilinear", antialias=True, align_corners=False)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    res = mc_predict(model, x, samples=samples, seed=seeds, precision=precision)
    if resize is not None:

        def up(v: torch.Tensor) -> torch.Tensor:
            return F.interpolate(v, size=size, mode="bilinear", align_corners=False)

        probs = up(res["probs"])
        entropy = class_entropy(probs)
        resampled = {"probs": probs, "labels": probs.argmax(1).to(torch.uint8), "entropy": entropy}
        if "uncertainty" in res:
            resampled["uncertainty"] = up(res["uncertainty"][:, None])[:, 0]
            expected = up((res["entropy"] - res["mutual_information"])[:, None])[:, 0]
            resampled["mutual_information"] = (entropy - expected).clamp_min(0.0)
        res = resampled
    out = {"labels": res["labels"].cpu().numpy()}
    for name in outputs:
        if name == "probs":
            out[name] = res["probs"].permute(0, 2, 3, 1).cpu().numpy().astype(float_dtype)
        elif name == "confidence":
            out[name] = res["probs"].amax(1).cpu().numpy().astype(float_dtype)
        elif name in res and name != "labels":
            out[name] = res[name].cpu().numpy().astype(float_dtype)
    return out


class _ChunkBuffer:
    """The outputs of one store chunk (frames [start, stop)), filled with nodata until frames arrive."""

    def __init__(self, worker: UnitWorker, start: int, stop: int) -> None:
        job = worker.job
        self.worker, self.start, self.stop = worker, start, stop
        n, h, w = stop - start, job.plan.height, job.plan.width
        self.arrays: dict[str, np.ndarray] = {}
        for name in job.outputs:
            if name == "labels":
                self.arrays[name] = np.full((n, h, w), NODATA_LABEL, np.uint8)
            elif name == "probs":
                self.arrays[name] = np.full((n, h, w, worker.model.num_classes), np.nan, job.float_dtype)
            else:
                self.arrays[name] = np.full((n, h, w), np.nan, job.float_dtype)

    def put(self, index: int, values: dict[str, np.ndarray]) -> None:
        for name, arr in self.arrays.items():
            arr[index - self.start] = values[name]

    def flush_and_next(self, unit_stop: int) -> _ChunkBuffer | None:
        """Write this chunk (whole, one writer) and open the next one of the unit, if any."""
        first = self.worker.job.first_frame
        self.worker.write([slice(self.start - first, self.stop - first)], self.arrays)
        if self.stop >= unit_stop:
            return None
        return _ChunkBuffer(self.worker, self.stop, min(self.stop + self.worker.job.chunk_frames, unit_stop))


def _batches(frames: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    indices: list[int] = []
    batch: list[np.ndarray] = []
    for i, frame in frames:
        indices.append(i)
        batch.append(frame)
        if len(batch) == size:
            yield indices, batch
            indices, batch = [], []
    if batch:
        yield indices, batch


def index_ranges(indices: Iterable[int]) -> list[list[int]]:
    """[3, 4, 5, 9] -> [[3, 6], [9, 10]]: half-open ranges (of frames, tiles), compact in attributes."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def require_readable(path: str | Path) -> None:
    """At an actor's start: its node must see the input (a shared path or a URL), or the run stops with one line saying where."""
    from segbatch import location

    try:
        ok = location.exists(location.parse(path))
    except OSError:
        ok = False
    if not ok:
        raise InputError(f"node {_node_ip()} cannot read the input {path} (is it on a path or URL every node sees?)")


def _node_ip() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except Exception:  # outside Ray
        import socket

        return socket.gethostname()


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray: no node
        return None


def _ray_gave_gpu() -> bool:
    try:
        import ray

        return ray.is_initialized() and bool(ray.get_gpu_ids())
    except Exception:  # outside Ray (tests, one process): use CUDA when present
        return True
