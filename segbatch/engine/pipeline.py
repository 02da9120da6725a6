"""The worker: one model per actor, and a pipeline per unit that keeps the device busy.

A unit flows through three stages that run side by side:

    read-ahead thread    the source's batches (decode, windowed reads), stacked, into a bounded queue
    this thread          host -> device, the model (MC dropout), device -> host copies started
    writer thread        copies finished, the source's placer cuts whole chunks, fenced writes, digests

so decoding the next batch and writing the last one happen while the model
runs. On CUDA the copies back go into pinned memory on their own stream;
the writer waits on an event, never the model. The actor runs up to two
units at once (Ray's `max_concurrency`); the model itself is used by one at a
time, so one unit's first reads and last writes hide behind the other's model
work. Queues are bounded: memory stays flat whatever the input's length.

Each unit's ledger entry records its run, node, chunk digests, and the
seconds each stage spent (read, to_device, model, to_host, write, and the
model thread's waits), so `segbatch info` can say where the time goes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import numpy as np

from segbatch.batching import batched
from segbatch.engine.runjob import RunJob, RunUnit, input_job
from segbatch.engine.source import Item, Placer, SourceJob, UnitReport, Write
from segbatch.errors import InputError
from segbatch.lru import LruCache
from segbatch.mc import derive_seed, predict_outputs
from segbatch.store import OpenArrays, record_unit, write_region

OPEN_GROUPS = 64  # stores (a job's groups) an actor keeps open (units of one input tend to come together)
QUEUE_BATCHES = 2  # batches waiting between stages: enough to hide jitter, few enough to bound memory
STAGES = ("read", "to_device", "model", "to_host", "write", "wait")


class PipelineWorker:
    """What every actor holds: its torch threads, its device (the GPU Ray gave it, else CPU), the model, the stores it writes."""

    def __init__(self, job: RunJob, gpus: str | None = None) -> None:
        """`gpus`: a helper's (`--actors-per-gpu auto`): the GPU ids Ray gave the actor whose device it shares."""
        import os

        import torch

        from segbatch.heap import keep_freed_buffers
        from segbatch.location import use_variables

        keep_freed_buffers()  # every frame's buffers come from memory freed before, not from fresh pages (segbatch.heap)
        use_variables(job.environment)  # before the checkpoint, an input or a store is read
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before CUDA starts in this process: the shared device is its cuda:0

        torch.set_num_threads(max(1, job.step.threads))
        os.environ.setdefault("GDAL_NUM_THREADS", str(max(1, job.step.threads)))  # GDAL decodes a raster window's blocks on as many (read as a dataset opens)
        self.job, self.step, self.gpus = job, job.step, gpus
        self.device = torch.device("cuda" if torch.cuda.is_available() and (gpus is not None or _ray_gave_gpu()) else "cpu")
        self.cuda = self.device.type == "cuda"
        self.model: Any = None  # loaded by device_name(), the pool's first call
        self.temperature = 1.0  # the checkpoint's calibration, read with the model
        self.model_lock = threading.Lock()  # two units in flight, one model: its calls take turns
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None  # type: ignore[no-untyped-call]
        self.stores: LruCache[str, OpenArrays] = LruCache(OPEN_GROUPS)  # the stores (a job's groups) this actor writes to
        self.reading = threading.Event()  # set once the unit that came in last has its first batch (or has ended): see `process`
        self.reading.set()
        self.reading_lock = threading.Lock()
        self.node = _node_id()
        if job.first is not None:
            input_job(job.first)  # a run of one input: its node check, before any unit

    def device_name(self) -> str:
        """Load the model, then say the device: the pool's first call, so the driver tells an actor that is up from one that is ready."""
        if self.model is None:
            import torch

            from segbatch.model.checkpoint import load_checkpoint

            writer = threading.Thread(target=_import_writer, name="segbatch-imports", daemon=True)
            writer.start()  # beside the model's load (on a GPU, mostly CUDA's start-up), not in the first unit's way
            ckpt = load_checkpoint(self.step.checkpoint)
            self.temperature = ckpt.calibration_temperature  # `segbatch calibrate`'s, else 1
            model = ckpt.model.to(self.device).eval()
            # on GPUs, channels-last feeds cuDNN's tensor-core kernels without layout conversions (same results: tested on CPU)
            self.model = model.to(memory_format=torch.channels_last) if self.cuda else model  # type: ignore[call-overload]
            writer.join()
        return str(self.device)

    def placement(self) -> tuple[str, str]:
        """(node id, GPU ids) of the device this actor feeds: the pool counts the actors per GPU by it."""
        if self.gpus is not None:
            return self.node or "", self.gpus
        try:
            import ray

            return self.node or "", ",".join(str(i) for i in ray.get_gpu_ids())
        except Exception:  # outside Ray
            return self.node or "", ""

    def process(self, unit: RunUnit) -> dict[str, Any]:
        """Run one unit through the pipeline; write its chunks, then its ledger entry; return the entry."""
        with self.reading_lock:  # this unit reads once the one that came in before it has begun to (see `_read`)
            before, begun = self.reading, threading.Event()
            self.reading = begun
        try:
            return self._process(unit, before, begun)
        finally:
            begun.set()  # a unit that ended before reading holds no later one back

    def _process(self, unit: RunUnit, before: threading.Event, begun: threading.Event) -> dict[str, Any]:
        source = input_job(unit.job)
        root = self._open(source.store)
        started = time.perf_counter()
        report = UnitReport()
        times = dict.fromkeys(STAGES, 0.0)
        digests: dict[str, str] = {}
        placer = source.placer(unit.unit, self.model.num_classes)
        batches: queue.Queue[Any] = queue.Queue(QUEUE_BATCHES)
        results: queue.Queue[Any] = queue.Queue(QUEUE_BATCHES)
        reader = _Stage(lambda stage: self._read(source, unit, report, stage, times, before, begun), batches)
        writer = _Stage(lambda stage: self._write(root, placer, stage, digests, times), results)
        reader.start()
        writer.start()
        try:
            while True:
                t = time.perf_counter()
                batch = reader.get()
                times["wait"] += time.perf_counter() - t
                if batch is None:
                    break
                items, host = batch
                results_for_batch = self._infer(source, items, host, times)
                t = time.perf_counter()
                writer.put((items, results_for_batch))
                times["wait"] += time.perf_counter() - t
            writer.put(None)
            writer.join()
        finally:
            reader.stop()
            writer.stop()
        stats = source.unit_stats(unit.unit, report)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        stats["stages"] = {k: round(v, 4) for k, v in times.items()}
        self.job.fence.check(fresh=True)  # a ledger entry counts a unit done: never written on an old read of the lease
        entry = {**stats, "node": self.node, "run": self.job.fence.run, "chunks": dict(sorted(digests.items()))}
        record_unit(root.root, unit.id, entry)
        return entry

    def _open(self, store: str) -> OpenArrays:
        """Where a unit's chunks and ledger entry go: its input's store, or its group of a job store (it and its arrays
        opened once per actor)."""
        return self.stores.get(store, lambda: OpenArrays(self.job.fence.open(store)))

    def _read(
        self, source: SourceJob[Any], unit: RunUnit, report: UnitReport, out: _Stage, times: dict[str, float], before: threading.Event, begun: threading.Event
    ) -> None:
        """Read-ahead thread: the unit's items in batches of the model step's size, stacked on the host (pinned on CUDA), into the queue.

        It begins once the unit that came to this actor before it has its
        first batch (`before`), and says when it has its own (`begun`). Two
        units sent together, the second starting where the first ends, then
        read in that order: the second goes on with the first one's decoder
        when that range ends (`segbatch.sources.video`), where, reading first,
        it would seek and decode the GOP up to its start again.
        """
        before.wait()
        with closing(source.read(unit.unit, report)) as read:  # closed however this ends: a video's decoder goes to the next unit
            batches = batched(read, self.step.batch_size)
            while True:
                t = time.perf_counter()
                items = next(batches, None)
                begun.set()  # (a read that fails sets it as its unit ends: `process`)
                host = None if items is None else self._stack(items)
                times["read"] += time.perf_counter() - t
                out.emit(None if items is None else (items, host))
                if items is None:
                    return

    def _stack(self, items: list[Item]) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(np.stack([item.data for item in items])))
        return x.pin_memory() if self.cuda else x

    def _infer(self, source: SourceJob[Any], items: list[Item], host: Any, times: dict[str, float]) -> Any:
        """The model step: to the device, MC dropout, the store's arrays computed there, copies back started."""
        import torch

        t = time.perf_counter()
        with self.model_lock:
            times["wait"] += time.perf_counter() - t  # the other unit in flight had the model
            t = time.perf_counter()
            x = source.to_model(host.to(self.device, non_blocking=True))
            times["to_device"] += time.perf_counter() - t
            t = time.perf_counter()
            outputs = source.from_model(self.predict(x, [derive_seed(self.step.seed, item.index) for item in items]))
            times["model"] += time.perf_counter() - t
            t = time.perf_counter()
            if not self.cuda:
                host_outputs: Any = {name: value.numpy() for name, value in outputs.items()}
            else:
                assert self.copy_stream is not None
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.copy_stream):
                    pinned = {name: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for name, v in outputs.items()}
                    for name, value in outputs.items():
                        value.record_stream(self.copy_stream)
                        pinned[name].copy_(value, non_blocking=True)
                    done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                    done.record(self.copy_stream)
                host_outputs = (pinned, done)
            times["to_host"] += time.perf_counter() - t
        return host_outputs

    def predict(self, x: Any, seeds: list[int]) -> dict[str, Any]:
        """The model on a batch on the device: the store's arrays, still there (a benchmark's stand-in device replaces this)."""
        step = self.step
        return predict_outputs(
            self.model, x, seeds, step.samples, step.resize, step.outputs, step.float_dtype, step.precision, self.temperature, step.memory_share
        )

    def _write(self, root: OpenArrays, placer: Placer, results: _Stage, digests: dict[str, str], times: dict[str, float]) -> None:
        """Writer thread: wait for each batch's copies, let the source's placer cut whole chunks, write them fenced."""
        while True:
            got = results.take()
            if got is None:
                writes = placer.close()
                t = time.perf_counter()
                self._store(root, writes, digests)
                times["write"] += time.perf_counter() - t
                return
            items, outputs = got
            t = time.perf_counter()
            if isinstance(outputs, tuple):  # CUDA: pinned tensors and the event that says they are filled
                pinned, done = outputs
                done.synchronize()
                outputs = {name: value.numpy() for name, value in pinned.items()}
            times["to_host"] += time.perf_counter() - t
            t = time.perf_counter()
            self._store(root, placer.put(items, outputs), digests)
            times["write"] += time.perf_counter() - t

    def _store(self, root: OpenArrays, writes: list[Write], digests: dict[str, str]) -> None:
        for w in writes:
            self.job.fence.check()  # nothing is written once this run no longer owns the store
            written = write_region(root, w.region, w.arrays)
            if w.digests:
                digests.update(written)


class _Stopped(Exception):
    """The model thread let go of a stage (the unit failed): its thread ends quietly."""


class _Stage:
    """A pipeline thread and its bounded queue; an error in the thread is raised where the model thread uses the queue."""

    def __init__(self, body: Callable[[_Stage], None], channel: queue.Queue[Any]) -> None:
        self.channel = channel
        self.error: BaseException | None = None
        self.stopped = threading.Event()

        def run() -> None:
            try:
                body(self)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the model thread, which raises it
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    # the model thread's side

    def get(self) -> Any:
        """The next item the thread produced (None at its end); the thread's error if it failed."""
        while True:
            self._raise()
            try:
                return self.channel.get(timeout=0.1)
            except queue.Empty:
                if not self.thread.is_alive():
                    self._raise()
                    return self.channel.get_nowait() if not self.channel.empty() else None

    def put(self, item: Any) -> None:
        """Hand the thread an item (waits while its queue is full); the thread's error if it failed."""
        while True:
            self._raise()
            try:
                self.channel.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        """On the way out, also after an error: the thread stops at its next step (it is not waited for)."""
        self.stopped.set()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    # the stage thread's side

    def emit(self, item: Any) -> None:
        while True:
            if self.stopped.is_set():
                raise _Stopped
            try:
                self.channel.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self) -> Any:
        while True:
            if self.stopped.is_set():
                raise _Stopped
            try:
                return self.channel.get(timeout=0.1)
            except queue.Empty:
                continue


def require_readable(path: str) -> None:
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


def _import_writer() -> None:
    """Zarr and its codecs, which every unit writes with: the first unit would import them (0.2 s on a busy 2-core machine)."""
    import numcodecs  # noqa: F401
    import zarr.codecs  # noqa: F401
