"""`segbatch run`, once for every source: the prologue, the pool, the outcome, the store's final attributes.

The run: check the options and the target (the store must be new, or
replaced with --overwrite, or finished with --resume, and no other live
run's: its lease), load the checkpoint, let the source plan, join or start
Ray, size the pool, create or reopen the store, send the pending units to
the elastic pool, and let the source finish (finalise, or stitch). Only
small per-unit statistics travel back to the driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from segbatch import location
from segbatch.engine.job import RunConfig, config_digest, software_versions
from segbatch.engine.session import ray_session, stop_signal
from segbatch.engine.source import Source, unit_id
from segbatch.errors import InputError, Interrupted, RunError, first_line
from segbatch.lease import LEASE_GROUP, Lease, LeaseKeeper, LeaseLostError, built
from segbatch.location import Location
from segbatch.progress import RunProgress, note, phase
from segbatch.store import (
    base_attrs,
    clear_store,
    create_store,
    enclosing_store,
    finished_units,
    open_store,
    read_store,
    reopen_for_resume,
    store_attrs,
    update_attrs,
)

T = TypeVar("T")
UNITS_PER_ACTOR = 8  # units are cut so each actor gets at least this many: no actor idles long at the end


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

    def line(self, out: Location) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.skipped_units} units already done" if self.skipped_units else ""
        stitched = f", stitched in {self.stitch_seconds:.1f} s" if self.stitch_seconds is not None else ""
        return (
            f"segmented {self.items} {self.noun}s in {self.seconds:.1f} s ({rate:.2f} {self.noun}s/s) on {self.actors} actor(s) "
            f"[{self.device}]{resumed}{stitched} -> {out}"
        )


def run(cfg: RunConfig, make_source: Callable[[RunConfig, Any], Source], worker: type | None = None) -> RunSummary:
    """Segment `cfg.input` into `cfg.out` with the source `make_source(cfg, checkpoint)` plans.

    `worker` is the actor class (default: engine.pipeline.PipelineWorker; a
    benchmark passes a subclass whose `predict` stands in for a device).
    """
    from segbatch.engine.pipeline import PipelineWorker
    from segbatch.engine.pool import ActorPool
    from segbatch.engine.session import pool_size
    from segbatch.model.checkpoint import load_checkpoint

    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if cfg.resume and location.exists(cfg.out):
        read_store(cfg.out)  # an altered store is refused in one line before anything is loaded, claimed or started
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model))
    source = make_source(cfg, ckpt)
    config = fingerprint(cfg, ckpt.sha256, source)
    demo_notice(cfg.model, cfg.quiet)
    say_ray(cfg.address)
    with own_target(cfg, lease, ckpt.path) as keeper, ray_session(cfg.address, cfg.verbose):
        actors, gpus = pool_size(cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, source.max_units)  # before a store exists
        root = _prepare_store(cfg, source, ckpt, config, actors, keeper)
        units = source.units(store_attrs(root))
        done = finished_units(root)
        pending = [u for u in units if unit_id(u) not in done]
        job = source.job(location.absolute(cfg.out), location.absolute(ckpt.path), lease.run)
        summary = RunSummary(units=len(units), skipped_units=len(units) - len(pending), noun=source.noun)
        started = time.perf_counter()
        with recorded_outcome(root, len(units), "units"):
            source.begin(root, done, keeper)
            if pending:
                with (
                    ActorPool(
                        worker or PipelineWorker, job, actors, cfg.cpus_per_actor, gpus, grow=cfg.actors is None, describe=source.describe, quiet=cfg.quiet
                    ) as pool,
                    run_progress(cfg, source, units, pending) as progress,
                ):
                    for unit in pending:
                        pool.submit(unit)
                    while pool.has_next():
                        unit, entry = pool.get_next()
                        summary.items += source.size(unit)
                        source.unit_done(unit, entry)
                        progress.unit_done(unit, entry)
                    summary.actors, summary.device = pool.most_ready, pool.device
            summary.seconds = time.perf_counter() - started
            keeper.renew()
            keeper.check()  # the driver's own writes are fenced too: a run whose store was taken over finalises nothing
            source.finish(root, units, pending, summary, keeper)
        return summary


def run_progress(cfg: RunConfig, source: Source, units: Sequence[Any], pending: Sequence[Any]) -> RunProgress:
    """What the run says as units finish (bar, `-v` lines, `--progress json`), counting the store's units done before it."""
    items, left = sum(source.size(u) for u in units), sum(source.size(u) for u in pending)
    return RunProgress(
        len(units), items, len(units) - len(pending), items - left, source.noun, source.describe, source.size, cfg.quiet, cfg.verbose, cfg.progress
    )


def fingerprint(cfg: RunConfig, model_sha256: str, source: Source) -> dict[str, Any]:
    """The settings that decide the output's bits; --resume requires them unchanged (and names what differs)."""
    return model_fingerprint(cfg, model_sha256) | source.fingerprint()


def model_fingerprint(cfg: RunConfig, model_sha256: str) -> dict[str, Any]:
    """The part of a fingerprint that is not the source's: the model, the sampling, the software."""
    return {
        "model_sha256": model_sha256,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "float_dtype": cfg.float_dtype,
        "precision": cfg.precision,
        "software": software_versions(),
    }


def _prepare_store(cfg: RunConfig, source: Source, ckpt: Any, config: dict[str, Any], actors: int, keeper: LeaseKeeper) -> Any:
    """Reopen the store for --resume, or create it (replacing the old one for --overwrite): driver-only metadata."""
    if built(cfg.out) and cfg.resume:
        root, _ = resume_store(cfg.out, source, config, keeper.lease.run)
        return root

    def create() -> Any:
        layout, attrs = new_store_attrs(cfg, source, ckpt, config, actors, keeper.lease.run)
        return create_store(cfg.out, layout, attrs)

    return replace_store(cfg, keeper, create)


def new_store_attrs(cfg: RunConfig, source: Source, ckpt: Any, config: dict[str, Any], actors: int, run: str) -> tuple[Any, dict[str, Any]]:
    """A new store's layout and root attributes (a single input's store, or one group of a job's)."""
    layout, attrs = source.new_store(actors)
    attrs = base_attrs(attrs.pop("source"), model_attrs(ckpt), cfg.samples, cfg.seed, config, run) | {"fingerprint": config_digest(config)} | attrs
    return layout, attrs


def resume_store(path: Location, source: Source, config: dict[str, Any], run: str) -> tuple[Any, dict[str, Any]]:
    """--resume of a store (or a job's group): what the source needs checked, then the configuration; reopened as `run`'s."""
    root = open_store(path)
    source.check_resume(root, store_attrs(root))
    return reopen_for_resume(path, config, run)


def replace_store(cfg: RunConfig, keeper: LeaseKeeper, create: Callable[[], T]) -> T:
    """--overwrite (or a new store): empty the folder this run holds (all but its lease) and create the new store in it."""
    keeper.check()
    clear_store(cfg.out)
    return create()


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


def resolve_model(model: Path | None) -> Path:
    """The checkpoint to use: the user's, or the built-in demo model (`demo_notice` says so)."""
    if model is not None:
        return model
    from segbatch.demo.model import demo_checkpoint_path

    return demo_checkpoint_path()


def demo_notice(model: Path | None, quiet: bool) -> None:
    """Say that the demo model labels this run: once the inputs are checked, so a mistyped --input is the first thing a user reads."""
    if model is None:
        from segbatch.demo.model import DEMO_NOTICE

        note(DEMO_NOTICE, quiet)


def say_ray(address: str | None) -> None:
    """Start-up's next phase (segbatch.progress.StartUp): joining the Ray cluster the run was told to, or starting a local runtime."""
    address = address or os.environ.get("RAY_ADDRESS")
    phase("ray", f"joining the Ray cluster at {address}" if address else "starting Ray", address=address)


@contextmanager
def own_target(cfg: RunConfig, lease: Lease, checkpoint: Location, inputs: Sequence[Location] | None = None) -> Iterator[LeaseKeeper]:
    """The run's hold on its store for the block: checked, claimed before anything is written or deleted, renewed, let go.

    The checks run before the claim (a refused run writes nothing) and again
    once the lease is this run's (another run may have made or changed the
    store in between); a live run's store, even one still being created, is
    refused in one line whatever the timing.
    """
    check_target(cfg, checkpoint, inputs)
    with LeaseKeeper(cfg.out, lease) as keeper:
        if keeper.previous is not None:
            gone = "is gone" if keeper.previous.dead() else f"has not renewed its lease for {keeper.previous.age():.0f} s"
            note(f"warning: taking over {cfg.out} from {keeper.previous.holder()}, which {gone}")  # even with --quiet: who owned the store matters
        check_target(cfg, checkpoint, inputs)
        yield keeper


def check_target(cfg: RunConfig, checkpoint: Location, inputs: Sequence[Location] | None = None) -> None:
    """The store must be new, or be replaced (--overwrite) or finished (--resume), and lie inside no other store.

    The files the job reads (`inputs`: default the run's one input) and its
    checkpoint may not lie inside a store that --overwrite would empty
    (compared as places: `segbatch.location.place`). A folder that holds only
    a lease is a store whose creation never finished (or is going on: the
    claim refuses that).
    """
    enclosing = enclosing_store(cfg.out)
    if enclosing is not None:
        raise InputError(
            f"{cfg.out} lies inside the segbatch store {enclosing}: its groups are written by its own runs only "
            f"(resume a job with `segbatch run --input ... --out {enclosing} --resume`)"
        )
    there = built(cfg.out)
    if there and not (cfg.resume or cfg.overwrite):
        raise InputError(f"{cfg.out} exists; pass --resume to finish it or --overwrite to replace it")
    if there:
        open_store(cfg.out)  # only ever write into (or delete) a store segbatch wrote
    elif _foreign(cfg.out):
        raise InputError(f"{cfg.out} is not a Zarr v3 store (a file, or a folder of other files); choose another --out")
    for what, path in [*(("input", i) for i in (inputs if inputs is not None else [cfg.input])), ("checkpoint", checkpoint)]:
        if cfg.overwrite and location.inside(path, cfg.out):
            raise InputError(f"the {what} {path} is inside {cfg.out}, which --overwrite would delete; move it out first")
    if location.is_url(cfg.out):
        return  # object stores have no folders to check; a missing bucket or credentials fail at creation, in one line
    out = Path(cfg.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot create {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot create {out}: folder {parent} is not writable")


def _foreign(out: Location) -> bool:
    """A folder (or object-store prefix) that is neither empty nor a (claimed) segbatch store: someone else's data, never
    written into; a file is no store either."""
    names = location.children(out)
    if names is None:
        return location.exists(out)  # a file where the store would go
    keep = LEASE_GROUP
    return any(name != keep for name in names) and keep not in names


@contextmanager
def recorded_outcome(root: Any, total: int, what: str, left: Callable[[], int] | None = None, fail: Callable[[str], None] | None = None) -> Iterator[None]:
    """Make a run's end visible in the store: Ctrl-C, SIGTERM or SIGHUP leave it resumable (exit 130, 143, 129), any failure marks it failed.

    `left` counts what is still to do and `fail` marks the store failed
    (defaults: a single store's ledger and attributes; a job store has its own).
    """
    try:
        yield
    except KeyboardInterrupt:
        todo = left() if left is not None else total - len(finished_units(root))
        of = f" of {total}" if left is None else ""
        message = f"interrupted with {todo}{of} {what} left; finish with the same command and --resume"
        raise Interrupted(message, signum=stop_signal()) from None
    except Exception as exc:
        if not isinstance(exc, LeaseLostError):  # a run that lost its store writes nothing more to it
            try:
                (fail or (lambda why: update_attrs(root, status="failed", error=why)))(first_line(exc))
            except Exception:  # noqa: S110  (marking it failed failed too, a read-only store say: the first cause is what the user needs)
                pass
        raise


def finished_or_fail(root: Any, units: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """The ledger, every unit in it (else the store is marked failed and the run says --resume finishes it)."""
    ledger = finished_units(root)
    missing = [unit_id(u) for u in units if unit_id(u) not in ledger]
    if missing:
        update_attrs(root, status="failed", error=f"{len(missing)} units never finished")
        raise RunError(f"{len(missing)} units never finished (first: {missing[0]}); finish with --resume")
    return ledger


def stage_totals(ledger: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Seconds per pipeline stage over every unit, and the stage that bounds the run (what to make faster)."""
    totals: dict[str, float] = {}
    for entry in ledger.values():
        for stage, seconds in entry.get("stages", {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    if not totals:
        return {}
    busy = {k: v for k, v in totals.items() if k != "wait"}
    return {"seconds": {k: round(v, 3) for k, v in totals.items()}, "bottleneck": max(busy, key=lambda k: busy[k]) if busy else None}


def mark_complete(root: Any, problems: list[dict[str, Any]], summary: RunSummary, totals: dict[str, Any], ledger: Mapping[int, Mapping[str, Any]]) -> None:
    """The final attributes: status complete, the problems, and the run's figures (stage times included)."""
    summary.problems = problems
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=problems,
        summary={
            **totals,
            "worker_seconds": round(sum(float(s.get("seconds", 0.0)) for s in ledger.values()), 3),
            "wall_seconds": round(summary.seconds, 3),
            "actors": summary.actors,
            "device": summary.device,
            "stages": stage_totals(ledger),
        },
    )
