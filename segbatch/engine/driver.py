"""The driver: plan the units, create the store, keep the actors busy, record the outcome.

Only small per-unit statistics travel back here; frames and outputs stay in
the workers, which write their own chunks. A bounded number of units is in
flight per actor, so memory stays flat however long the input.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from segbatch import location
from segbatch.engine.job import FrameUnit, RunConfig, VideoJob, config_digest, fingerprint, source_identity
from segbatch.engine.session import child_processes, reap_on_exit, runtime_tag, stop_signal, stop_signals
from segbatch.errors import InputError, Interrupted, RunError, SegbatchError
from segbatch.lease import Lease, LeaseKeeper, LeaseLostError, claim
from segbatch.location import Location
from segbatch.progress import note, progress_bar
from segbatch.sources.video import VideoPlan, probe_video, truncation_problems
from segbatch.store import (
    OPTIONAL_OUTPUTS,
    StoreLayout,
    base_attrs,
    create_store,
    finished_units,
    open_store,
    remove_store,
    reopen_for_resume,
    update_attrs,
)

T = TypeVar("T")
IN_FLIGHT_PER_ACTOR = 2  # a queued unit hides the driver's round trip; near the end only one, so no actor idles
CHUNK_PIXELS = 2_000_000  # about 2 MB of labels (4 MB of float16) per chunk
MAX_CHUNK_FRAMES = 8
MAX_UNIT_CHUNKS = 16
UNITS_PER_ACTOR = 8
UNIT_RETRIES = 3  # a unit whose worker dies is redone on a fresh one this many times
PLACEMENT_NOTE_AFTER_S = 30.0
PROBE_TIMEOUT_S = 5.0


@dataclass
class RunSummary:
    """What the run did, for the closing line and the store's attributes."""

    items: int = 0  # frames, tiles or images done by this run
    units: int = 0
    skipped_units: int = 0
    seconds: float = 0.0
    actors: int = 0
    device: str = ""
    problems: list[dict[str, Any]] = field(default_factory=list)
    noun: str = "frame"
    stitch_seconds: float | None = None

    def line(self, out: Path) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.skipped_units} units already done" if self.skipped_units else ""
        stitched = f", stitched in {self.stitch_seconds:.1f} s" if self.stitch_seconds is not None else ""
        return (
            f"segmented {self.items} {self.noun}s in {self.seconds:.1f} s ({rate:.2f} {self.noun}s/s) on {self.actors} actor(s) "
            f"[{self.device}]{resumed}{stitched} -> {out}"
        )


def chunk_frames_for(height: int, width: int) -> int:
    """Frames per chunk: about CHUNK_PIXELS label bytes, at most MAX_CHUNK_FRAMES."""
    return max(1, min(MAX_CHUNK_FRAMES, CHUNK_PIXELS // max(1, height * width)))


def unit_frames_for(chunk_frames: int, gop: int, frames: int, actors: int) -> int:
    """Frames per unit: whole chunks; a GOP long where possible, yet enough units to keep every actor busy.

    A unit seeks once and decodes forward from a keyframe, so one shorter than
    the GOP decodes some frames twice; but decoding is cheap next to the model,
    and too few units leave actors idle (a single long-GOP clip would be one
    unit). So: at least UNITS_PER_ACTOR units per actor, else up to a GOP.
    """
    by_gop = max(1, min(MAX_UNIT_CHUNKS, -(-gop // chunk_frames)))
    by_load = max(1, frames // (chunk_frames * UNITS_PER_ACTOR * max(1, actors)))
    return chunk_frames * min(by_gop, by_load)


def plan_frame_units(first: int, stop: int, unit_frames: int) -> list[FrameUnit]:
    """Cut source frames [first, stop) into units of `unit_frames` (a multiple of the chunk), each owning whole chunks."""
    return [FrameUnit(i, s, min(s + unit_frames, stop)) for i, s in enumerate(range(first, stop, unit_frames))]


def frame_range(plan: VideoPlan, frames: tuple[int | None, int | None] | None) -> tuple[int, int]:
    """--frames A:B (Python-style: B exclusive, either side optional) checked against the video."""
    first, stop = frames or (None, None)
    first = 0 if first is None else first
    stop = plan.frames if stop is None else stop
    if not 0 <= first < stop <= plan.frames:
        raise InputError(f"--frames {first}:{stop} is outside the video's 0:{plan.frames}")
    return first, stop


def output_names(cfg: RunConfig) -> tuple[str, ...]:
    """The arrays a video or image run writes: labels, entropy, confidence, uncertainty (when sampling), and --outputs."""
    if cfg.samples == 0 and "mutual_information" in cfg.extra_outputs:
        raise InputError("mutual_information needs --samples >= 1")
    return ("labels", "entropy", "confidence", *(("uncertainty",) if cfg.samples > 0 else ()), *(o for o in OPTIONAL_OUTPUTS if o in cfg.extra_outputs))


def model_attrs(ckpt: Any) -> dict[str, Any]:
    """The store's `model` attribute: what labelled it, and how to colour its classes."""
    return {
        "arch": ckpt.spec.arch,
        "classes": list(ckpt.spec.class_names),
        "palette": [list(c) for c in ckpt.spec.palette],
        "sha256": ckpt.sha256,
        "path": str(ckpt.path),
        "dropout": ckpt.spec.dropout,
        "width": ckpt.spec.width,
    }


def resolve_model(model: Path | None, quiet: bool) -> Path:
    """The checkpoint to use: the user's, or the built-in demo model (with a notice)."""
    if model is not None:
        return model
    from segbatch.demo.model import DEMO_NOTICE, demo_checkpoint_path

    note(DEMO_NOTICE, quiet)
    return demo_checkpoint_path()


def run_video(cfg: RunConfig) -> RunSummary:
    """Segment a video into a Zarr store (see DESIGN.md): plan, store, actors, finalise."""
    from segbatch.engine.worker import UnitWorker
    from segbatch.model.checkpoint import load_checkpoint

    if not location.exists(cfg.input):
        raise InputError(f"{cfg.input}: no such file")
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model, cfg.quiet))
    if ckpt.spec.in_channels != 3:
        raise InputError(f"the model takes {ckpt.spec.in_channels} input bands; video frames have 3 (RGB)")
    plan = probe_video(cfg.input)
    if plan.demux_error:
        note(f"warning: {cfg.input}: {plan.demux_error}; segmenting the frames before it", cfg.quiet)
    first, stop = frame_range(plan, cfg.frames)
    outputs = output_names(cfg)
    chunk = chunk_frames_for(plan.height, plan.width)
    job = VideoJob(
        store=location.absolute(cfg.out),
        checkpoint=location.absolute(ckpt.path),
        plan=plan,
        first_frame=first,
        stop_frame=stop,
        samples=cfg.samples,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        resize=cfg.resize,
        outputs=outputs,
        float_dtype=cfg.float_dtype,
        threads=max(1, int(cfg.cpus_per_actor)),
        chunk_frames=chunk,
        precision=cfg.precision,
        hwaccel=cfg.hwaccel,
        run=lease.run,
    )
    config = fingerprint(job, ckpt.sha256, source_identity(cfg.input))
    check_target(cfg, lease, ckpt.path)
    with LeaseKeeper(cfg.out, lease) as keeper, ray_session(cfg.address):
        pool = pool_size(cfg, -(-(stop - first) // chunk))  # refuses an impossible pool before a store exists
        root, units, done = _prepare_store(cfg, job, ckpt, config, pool[0], keeper)
        return run_units(
            cfg,
            UnitWorker,
            job,
            root,
            [u for u in units if u.id not in done],
            len(units),
            pool,
            keeper,
            size=lambda u: u.stop - u.start,
            describe=lambda u: f"unit {u.id} (frames {u.start}:{u.stop})",
            noun="frame",
            finish=lambda summary, pending: _finalise(root, units, summary, truncation_problems(plan, stop)),
        )


def run_units(
    cfg: RunConfig,
    worker: type,
    job: Any,
    root: Any,
    pending: Sequence[Any],
    total: int,
    pool: tuple[int, float],
    keeper: LeaseKeeper,
    size: Callable[[Any], int],
    describe: Callable[[Any], str],
    noun: str,
    finish: Callable[[RunSummary, Sequence[Any]], None],
) -> RunSummary:
    """Every source's run: the pending units on the actor pool, then `finish` (finalise or stitch), the outcome recorded in the store.

    The driver's own writes are fenced too: a run whose lease was taken over
    stops before it finalises (its workers already stopped writing).
    """
    summary = RunSummary(units=total, skipped_units=total - len(pending), noun=noun)
    started = time.perf_counter()
    with recorded_outcome(root, total, "units"):
        if pending:
            summary.items += run_pool(worker, job, pending, cfg, *pool, size=size, describe=describe, noun=noun, summary=summary)
        summary.seconds = time.perf_counter() - started
        keeper.renew()
        keeper.check()
        finish(summary, pending)
    return summary


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for the length of a command: joined or started on entry, shut down on exit if this started it.

    Meanwhile SIGTERM and SIGHUP stop the command like Ctrl-C (exit 143, 129),
    and a local runtime this started goes with the driver even if it is killed
    (segbatch.engine.session).
    """
    before = child_processes()
    with runtime_tag() as tag:  # every process of a runtime ray.init starts here carries it
        started = ensure_ray(address)
    reaper = reap_on_exit(before, tag) if started else None
    with stop_signals():  # after ray.init, which installs its own SIGTERM handling
        try:
            yield
        finally:
            try:
                if started:
                    import ray

                    ray.shutdown()
            finally:
                if reaper is not None:
                    reaper.close()


@contextmanager
def recorded_outcome(root: Any, total: int, what: str) -> Iterator[None]:
    """Make a run's end visible in the store: Ctrl-C, SIGTERM or SIGHUP leave it resumable (exit 130, 143, 129), any failure marks it failed."""
    try:
        yield
    except KeyboardInterrupt:
        left = total - len(finished_units(root))
        message = f"interrupted with {left} of {total} {what} left; finish with the same command and --resume"
        raise Interrupted(message, signum=stop_signal()) from None
    except Exception as exc:
        if not isinstance(exc, LeaseLostError):  # a run that lost its store writes nothing more to it
            try:
                update_attrs(root, status="failed", error=first_line(exc))
            except Exception:  # noqa: S110  (marking it failed failed too, a read-only store say: the first cause is what the user needs)
                pass
        raise


def check_target(cfg: RunConfig, lease: Lease, checkpoint: Location) -> None:
    """Before any work: the store must be new, or be replaced (--overwrite) or finished (--resume), and no other live run's.

    An existing store is claimed for this run (its lease), so a second run of
    the same command is refused with one line naming the holder; the files
    the job reads may not lie inside a store that --overwrite would delete.
    """
    there = location.exists(cfg.out)
    if there and not (cfg.resume or cfg.overwrite):
        raise InputError(f"{cfg.out} exists; pass --resume to finish it or --overwrite to replace it")
    if there and cfg.overwrite:
        open_store(cfg.out)  # only ever delete a store segbatch wrote
        for what, path in (("input", cfg.input), ("checkpoint", checkpoint)):
            if location.inside(path, cfg.out):
                raise InputError(f"the {what} {path} is inside {cfg.out}, which --overwrite would delete; move it out first")
    if there:
        previous = claim(cfg.out, lease)
        if previous is not None:
            gone = "is gone" if previous.dead() else f"has not renewed its lease for {previous.age():.0f} s"
            note(f"warning: taking over {cfg.out} from {previous.holder()}, which {gone}")  # even with --quiet: who owned the store matters
    if location.is_url(cfg.out):
        return  # object stores have no folders to check; a missing bucket or credentials fail at creation, in one line
    out = Path(cfg.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot create {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot create {out}: folder {parent} is not writable")


def pool_size(cfg: RunConfig, units: int) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU (or per --cpus-per-actor CPUs) unless --actors says, never more than units."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
    if cfg.actors is not None:
        n_actors = cfg.actors
    elif gpus > 0:
        n_actors = max(1, int(resources.get("GPU", 0) / gpus))
    else:
        n_actors = max(1, int(resources.get("CPU", 1) // cfg.cpus_per_actor))
    n_actors = min(n_actors, units)
    for what, need, have in (("CPUs", n_actors * cfg.cpus_per_actor, resources.get("CPU", 0.0)), ("GPUs", n_actors * gpus, resources.get("GPU", 0.0))):
        if need > have + 1e-9:
            raise InputError(f"{n_actors} actors need {need:g} {what} but the Ray cluster has {have:g}; lower --actors or the per-actor request")
    return n_actors, gpus


def _prepare_store(
    cfg: RunConfig, job: VideoJob, ckpt: Any, config: dict[str, Any], actors: int, keeper: LeaseKeeper
) -> tuple[Any, list[FrameUnit], dict[int, Any]]:
    """Create the store (driver-only metadata) and its units, or reopen both for --resume.

    The unit size is decided once, when the store is made, and kept in it: a
    resumed run redoes exactly the units the ledger lacks, whatever its pool.
    """
    if location.exists(cfg.out) and cfg.resume:
        root, attrs = reopen_for_resume(cfg.out, config, keeper.lease.run)
        units = plan_frame_units(job.first_frame, job.stop_frame, int(attrs["unit_frames"]))
        return root, units, finished_units(root)
    return replace_store(cfg, keeper, lambda: _new_video_store(cfg, job, ckpt, config, actors, keeper.lease))


def replace_store(cfg: RunConfig, keeper: LeaseKeeper, create: Callable[[], T]) -> T:
    """--overwrite (or a new store): delete the old one and create the new one, with no lease renewal in between."""
    with keeper.lock:
        if location.exists(cfg.out) and cfg.overwrite:
            remove_store(cfg.out)
        return create()


def _new_video_store(
    cfg: RunConfig, job: VideoJob, ckpt: Any, config: dict[str, Any], actors: int, lease: Lease
) -> tuple[Any, list[FrameUnit], dict[int, Any]]:
    import numpy as np

    unit_frames = unit_frames_for(job.chunk_frames, job.plan.gop, job.stop_frame - job.first_frame, actors)
    units = plan_frame_units(job.first_frame, job.stop_frame, unit_frames)
    plan = job.plan
    times = plan.times[job.first_frame : job.stop_frame]
    layout = StoreLayout(
        dims=("frame", "y", "x"),
        shape=(job.stop_frame - job.first_frame, plan.height, plan.width),
        chunks=(job.chunk_frames, plan.height, plan.width),
        num_classes=ckpt.spec.num_classes,
        units=len(units),
        outputs=job.outputs,
        float_dtype=job.float_dtype,
        coords={"time": (("frame",), np.asarray(times, dtype=np.float64), {"units": "s", "long_name": "presentation time from the stream's pts"})},
    )
    source = {
        "path": location.absolute(cfg.input),
        "kind": "video",
        "codec": plan.codec,
        "frames": plan.frames,
        "declared_frames": plan.declared,  # what the container's index declares (MP4/MOV): more than `frames` when the file is truncated
        "height": plan.height,
        "width": plan.width,
        "rotation": plan.rotation,
        "time_base": str(plan.time_base),
        "frame_range": [job.first_frame, job.stop_frame],
        "demux_error": plan.demux_error,
    }
    attrs = base_attrs(source, model_attrs(ckpt), cfg.samples, cfg.seed, config, lease.run) | {
        "fingerprint": config_digest(config),
        "resize": list(cfg.resize) if cfg.resize else None,
        "unit_frames": unit_frames,
    }
    return create_store(cfg.out, layout, attrs, lease), units, {}


def run_pool(
    worker: type,
    job: Any,
    pending: Sequence[Any],
    cfg: RunConfig,
    n_actors: int,
    gpus: float,
    size: Callable[[Any], int],
    describe: Callable[[Any], str],
    noun: str,
    summary: RunSummary,
) -> int:
    """Run `worker(job).process(unit)` for every pending unit on a pool of Ray actors; returns the items done.

    The pool is elastic. An actor that dies (its node lost, its process
    killed) is replaced by a fresh one, placed wherever the cluster has room,
    and its units go back to the front of the queue for any ready actor; a
    unit is redone at most UNIT_RETRIES times. Units are idempotent (whole
    chunks, then the ledger entry), so a redo changes no bits. Without
    --actors the pool also grows while the cluster has free room for another
    actor (GPUs, or CPUs on a CPU cluster). Two units per actor are in flight
    while many remain, one near the end, so no unit waits behind a busy actor.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    pool = _ActorPool(worker, job, cfg, gpus)
    for _ in range(min(n_actors, len(pending))):
        pool.start()
    queue: deque[tuple[int, Any]] = deque(enumerate(pending))
    in_flight: dict[Any, tuple[int, int, Any]] = {}  # ref -> (actor slot, position in `pending`, unit)
    lost: dict[int, int] = {}  # position in `pending` -> times its actor died under it
    done = 0
    waiting_since = last_grow = time.monotonic()
    noted = False

    def fill(slot: int) -> None:
        busy = sum(1 for s, _, _ in in_flight.values() if s == slot)
        while queue and busy < (IN_FLIGHT_PER_ACTOR if len(queue) >= len(pool.ready) else 1):
            pos, unit = queue.popleft()
            in_flight[pool.actors[slot].process.remote(unit)] = (slot, pos, unit)
            busy += 1

    try:
        with progress_bar(sum(size(u) for u in pending), "segmenting", noun, cfg.quiet) as bar:
            while queue or in_flight:
                if cfg.actors is None and time.monotonic() - last_grow > GROW_EVERY_S:
                    last_grow = time.monotonic()
                    if len(queue) > len(pool.actors):
                        pool.grow()
                ready, _ = ray.wait([*in_flight, *pool.starting], num_returns=1, timeout=GROW_EVERY_S)
                if not ready:
                    if not pool.ready and not noted and time.monotonic() - waiting_since > PLACEMENT_NOTE_AFTER_S:
                        note(f"waiting for the cluster to place actors ({cfg.cpus_per_actor:g} CPU, {gpus:g} GPU each); it may be busy", cfg.quiet)
                        noted = True
                    continue
                ref = ready[0]
                if ref in pool.starting:
                    slot = pool.on_started(ref)
                    if slot is not None:
                        summary.device = summary.device or pool.device
                        summary.actors = max(summary.actors, len(pool.ready))
                        for s in sorted(pool.ready):
                            fill(s)
                    continue
                slot, pos, unit = in_flight.pop(ref)
                try:
                    ray.get(ref)
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
                    if isinstance(cause, SegbatchError):
                        raise cause from None
                    raise RunError(f"{describe(unit)} failed: {first_line(cause or exc)}") from None
                except RayActorError:
                    lost[pos] = lost.get(pos, 0) + 1
                    if lost[pos] > UNIT_RETRIES:
                        raise RunError(
                            f"{describe(unit)} lost its worker {lost[pos]} times (out of memory?); lower --batch-size and finish with --resume"
                        ) from None
                    queue.appendleft((pos, unit))
                    if pool.replace(slot):
                        note(f"warning: a worker was lost (node gone or process killed); its units are redone on the others ({describe(unit)})", cfg.quiet)
                    for s in sorted(pool.ready):
                        fill(s)
                    continue
                done += size(unit)
                bar.update(size(unit))
                fill(slot)
    finally:
        pool.close()
    return done


GROW_EVERY_S = 5.0  # how often the driver looks for room for more actors (and wakes to say it is waiting)
MAX_START_FAILURES = 3  # actors that fail in their constructor before the run gives up


class _ActorPool:
    """The run's actors by slot: those starting (placement, model loading) and those ready for units."""

    def __init__(self, worker: type, job: Any, cfg: RunConfig, gpus: float) -> None:
        import ray

        self.cls: Any = ray.remote(max_restarts=0, max_task_retries=0)(_guarded(worker))
        self.job, self.cfg, self.gpus = job, cfg, gpus
        self.actors: dict[int, Any] = {}
        self.starting: dict[Any, int] = {}  # device_name() ref -> slot
        self.ready: set[int] = set()
        self.device = ""
        self.failures = 0
        self._next = 0

    def start(self) -> None:
        slot, self._next = self._next, self._next + 1
        actor = self.cls.options(num_cpus=self.cfg.cpus_per_actor, num_gpus=self.gpus, name=f"segbatch-worker-{os.getpid()}-{slot}").remote(self.job)
        self.actors[slot] = actor
        self.starting[actor.device_name.remote()] = slot

    def on_started(self, ref: Any) -> int | None:
        """The actor answered (ready: its slot) or died starting (replaced, or the run fails when it is the model's fault)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        slot = self.starting.pop(ref)
        try:
            self.device = self.device or str(ray.get(ref))
        except RayTaskError as exc:
            # the constructor raised (the checkpoint or the store is unreadable from that node, say): no retry fixes it
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            kind = InputError if isinstance(cause, InputError) else RunError
            raise kind(f"a worker could not start: {first_line(cause)}") from None
        except RayActorError:
            self.failures += 1
            if self.failures >= MAX_START_FAILURES:
                raise RunError(f"{self.failures} workers died while starting (out of memory, or their nodes went away)") from None
            self.replace(slot)  # lost while being placed or started (its node went away): try again elsewhere
            return None
        self.ready.add(slot)
        return slot

    def replace(self, slot: int) -> bool:
        """Retire a dead actor and start another in its place; False when the slot was already replaced."""
        import ray

        actor = self.actors.pop(slot, None)
        if actor is None:
            return False
        self.ready.discard(slot)
        ray.kill(actor, no_restart=True)
        self.start()
        return True

    def grow(self) -> None:
        """Start one more actor when the cluster has room for it now (and none is still being placed)."""
        import ray

        if self.starting:
            return
        free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        if free.get("CPU", 0.0) + 1e-9 >= self.cfg.cpus_per_actor and free.get("GPU", 0.0) + 1e-9 >= self.gpus:
            self.start()

    def close(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)


def _guarded(worker: type) -> type:
    """`worker` with its constructor's error kept and raised by the first call (`device_name`).

    Ray reports a failed constructor as text only; raised from a method, the
    error reaches the driver as the task's typed cause, so its exit code
    follows its type (an unreadable checkpoint on a node is bad input: 2).
    """

    def __init__(self: Any, *args: Any) -> None:
        self.start_error = None
        try:
            init: Callable[..., None] = getattr(worker, "__init__")  # noqa: B009  (the class's own constructor, on the guarded instance)
            init(self, *args)
        except Exception as exc:
            self.start_error = exc

    def device_name(self: Any) -> str:
        if self.start_error is not None:
            raise self.start_error
        return str(getattr(worker, "device_name")(self))  # noqa: B009  (any worker class: typed as `type`)

    return type(worker.__name__, (worker,), {"__init__": __init__, "device_name": device_name, "__module__": worker.__module__})


def ensure_ray(address: str | None) -> bool:
    """Join the given cluster, or start a local Ray runtime; True when this call started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    if address and address != "auto":
        _probe(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {first_line(exc)}") from None
    return True


def _probe(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _finalise(root: Any, units: list[FrameUnit], summary: RunSummary, planned: Sequence[dict[str, Any]] = ()) -> None:
    """Driver: from the ledger (every unit, this run's and earlier ones') and the plan's problems (a truncated file), write the final attributes."""
    ledger = finished_units(root)
    missing = [u.id for u in units if u.id not in ledger]
    if missing:
        update_attrs(root, status="failed", error=f"{len(missing)} units never finished")
        raise RunError(f"{len(missing)} units never finished (first: {missing[0]}); finish with --resume")
    problems = [
        {"kind": "frames"} | {k: v for k, v in stats.items() if k in ("frames", "missing", "damaged", "messages")}
        for _, stats in sorted(ledger.items())
        if stats.get("missing") or stats.get("damaged")
    ] + list(planned)
    summary.problems = problems
    seconds = sum(stats.get("seconds", 0.0) for stats in ledger.values())
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=problems,
        summary={
            "frames": sum(s["frames"][1] - s["frames"][0] for s in ledger.values()),
            "worker_seconds": round(seconds, 3),
            "wall_seconds": round(summary.seconds, 3),
            "actors": summary.actors,
            "device": summary.device,
        },
    )
