"""`segbatch run`, once for every source and every number of inputs: the prologue, the pool, the outcome, the summary.

A run of one input is a job of one whose store is the root itself
(segbatch.engine.target.Target decides root or group, once). The run:
check the options, load the checkpoint, plan each input (its own source,
exactly as a run of it alone would plan it), claim the target (the store
must be new, or replaced with --overwrite, or finished with --resume, and no
other live run's: its lease), join or start Ray, size the pool, create or
reopen the stores, send every input's pending units to one elastic pool
(longest inputs first), let each source finish its store (finalise, or
stitch), and in a job record every input's outcome at the root. Only small
per-unit statistics travel back to the driver.

In a job a bad input (unreadable, no frames, the wrong bands, a unit its
worker refuses) fails alone; the others finish, and the summary and exit
code say how many failed. `--resume` finishes exactly the stores and units
that are missing; a job's list of inputs that changed is refused with the
difference named, unless `--add-inputs` (new inputs only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from segbatch import location
from segbatch.engine.groups import Creator, InputState, finish, follow, model_attrs, model_fingerprint, new_states, plan, prepare, resume_states
from segbatch.engine.job import RunConfig
from segbatch.engine.outcome import JobSummary, RunSummary, recorded_outcome
from segbatch.engine.runjob import RunJob, RunUnit
from segbatch.engine.session import ray_session
from segbatch.engine.source import Source
from segbatch.engine.target import Target, own_target
from segbatch.errors import InputError
from segbatch.inputs import Input
from segbatch.jobstore import job_attrs, new_job_attrs, update_job
from segbatch.lease import Lease, built
from segbatch.location import storage_variables
from segbatch.owner import Owner
from segbatch.progress import RunProgress, note, phase
from segbatch.store import read_store

if TYPE_CHECKING:
    from zarr import Group


class SourceClass(Protocol):
    """A kind's driver-side source class (segbatch.kinds): planned per input, and the options every input of a job shares."""

    def __call__(self, cfg: RunConfig, ckpt: Any) -> Source[Any]: ...

    def job_options(self, cfg: RunConfig) -> dict[str, Any]:
        """The part of a job's fingerprint that the kind's options decide (each group's own adds its input's identity)."""
        ...


def run(
    cfg: RunConfig,
    inputs: Sequence[Input],
    make_source: SourceClass,
    many: bool = False,
    spec: str = "",
    add_inputs: bool = False,
    worker: type | None = None,
) -> RunSummary:
    """Segment `inputs` (one kind) into `cfg.out`: the store itself for one input, a group each for a job of `many`.

    `spec` is the --input a job was given (recorded at its root). `worker`
    is the actor class (default: engine.pipeline.PipelineWorker; a benchmark
    passes a subclass whose `predict` stands in for a device). Returns a
    JobSummary for a job.
    """
    from segbatch.model.checkpoint import load_checkpoint

    target = Target(cfg.out, many)
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if add_inputs and not many:
        raise InputError("--add-inputs is for jobs of many inputs (a folder, a glob, @FILE or STAC as --input)")
    if add_inputs and not cfg.resume:
        raise InputError("--add-inputs adds inputs to a job when resuming it; pass --resume too")
    if not many and cfg.resume and location.exists(cfg.out):
        read_store(cfg.out)  # an altered store is refused in one line before anything is loaded, claimed or started
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model))
    kind = inputs[0].kind
    config = model_fingerprint(cfg, ckpt.sha256) | make_source.job_options(cfg) | {"input_kind": kind}  # a job's (each input's adds its own)
    states, done_before = new_states(target, inputs), list[InputState]()
    early = not (many and cfg.resume)  # a resumed job's inputs are named by its store: planned once it is held
    if early:
        plan(cfg, ckpt, make_source, states)
    demo_notice(cfg.model, cfg.quiet)
    with own_target(cfg, lease, ckpt.path, inputs=[i.location for i in inputs]) as owner:
        if many and cfg.resume and built(cfg.out):
            states, done_before = resume_states(cfg, target, inputs, config, add_inputs)
        if not early:
            plan(cfg, ckpt, make_source, states)
        say_ray(cfg.address)
        with ray_session(cfg.address, cfg.verbose):
            return _run(cfg, target, ckpt, kind, config, spec, states, done_before, owner, worker)


def _run(
    cfg: RunConfig,
    target: Target,
    ckpt: Any,
    kind: str,
    config: dict[str, Any],
    spec: str,
    states: list[InputState],
    done_before: list[InputState],
    owner: Owner,
    worker: type | None,
) -> RunSummary:
    """The run once Ray is up: the pool sized, the stores made or reopened, the units run, the stores finished."""
    from segbatch.engine.session import pool_size

    every = done_before + states
    planned = [s for s in states if s.source is not None]
    units = max(1, sum(s.planned().max_units for s in planned))
    actors, gpus = pool_size(cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, units, cfg.actors_per_gpu)  # before a store exists
    if not gpus and cfg.actors_per_gpu != 1:
        note("note: the Ray cluster has no GPU: --actors-per-gpu has no effect (an actor per --cpus-per-actor CPUs)", cfg.quiet)
    noun = planned[0].planned().noun if planned else _noun(kind)
    if target.many:
        root = _job_root(cfg, ckpt, kind, config, spec, every, owner)
        summary: RunSummary = JobSummary(noun=noun, inputs=len(every), already=len(done_before))
    else:  # the store is the root: made (or reopened) before the run's outcome can be recorded in it
        (state,) = states
        prepare(cfg, ckpt, states, actors, owner)
        Creator.create_now(owner, state)
        root = state.opened()
        summary = RunSummary(units=len(state.units), skipped_units=len(state.units) - len(state.pending), noun=noun)

    def fail(why: str) -> None:
        update_job(root, status="failed", error=why)

    left = (lambda: sum(s.left for s in states)) if target.many else None
    with recorded_outcome(root, sum(len(s.units) for s in states), "units", left=left, fail=fail if target.many else None):
        if target.many:
            prepare(cfg, ckpt, planned, actors, owner)
        _run_units(cfg, target, ckpt, states, actors, gpus, summary, owner, worker)
        owner.renew()
        owner.check()  # the driver's own writes are fenced too: a run whose store was taken over finishes nothing
        finish(states, summary, owner)
        if isinstance(summary, JobSummary):
            summary.complete = sum(1 for s in every if s.status == "complete")
            summary.failed = [s for s in every if s.status == "failed"]
            update_job(
                root,
                drop=("error",),
                status="complete",
                inputs=[s.entry() for s in every],
                summary={
                    "inputs": len(every),
                    "complete": summary.complete,
                    "failed": len(summary.failed),
                    "items": summary.items,
                    "noun": summary.noun,
                    "wall_seconds": round(summary.seconds, 3),
                    "actors": summary.actors,
                    "device": summary.device,
                    **({"actors_per_gpu": summary.actors_per_gpu} if summary.actors_per_gpu else {}),
                },
            )
    return summary


def _job_root(cfg: RunConfig, ckpt: Any, kind: str, config: dict[str, Any], spec: str, every: Sequence[InputState], owner: Owner) -> Group:
    """A job's root: reopened for --resume (its inputs and runs brought up to date), else made (replacing the old store)."""
    if cfg.resume and built(cfg.out):
        root = owner.open()
        update_job(root, drop=("error",), status="running", inputs=[s.entry() for s in every], runs=[*job_attrs(root)["runs"], owner.run])
        return root
    return owner.replace(lambda: owner.create_job(new_job_attrs(kind, spec, [s.entry() for s in every], model_attrs(ckpt), cfg, config, owner.run)))


def _run_units(
    cfg: RunConfig,
    target: Target,
    ckpt: Any,
    states: Sequence[InputState],
    actors: int,
    gpus: float,
    summary: RunSummary,
    owner: Owner,
    worker: type | None,
) -> None:
    """Every planned input's pending units on one pool, the longest inputs first, each input's once its store exists."""
    import ray

    from segbatch.engine.pipeline import PipelineWorker
    from segbatch.engine.pool import ActorPool
    from segbatch.engine.sharing import MAX_PER_GPU

    planned = sorted((s for s in states if s.source is not None and s.status != "failed"), key=lambda s: -len(s.pending))
    for state in planned:
        if not state.pending:
            state.planned().begin(state.opened(), state.done, owner)  # all its units were done before
    todo = [s for s in planned if s.pending]
    started = time.perf_counter()
    if todo:
        by_group = {s.input.name: s for s in states}
        step = todo[0].planned().step(location.absolute(ckpt.path))
        first = None
        if not target.many:
            first = todo[0].job_ref = ray.put(todo[0].planned().job(location.absolute(todo[0].store)))
        creator = Creator(owner, todo)
        try:
            with (
                ActorPool(
                    worker or PipelineWorker,
                    RunJob(owner.fence(), step, first, storage_variables()),
                    actors,
                    cfg.cpus_per_actor,
                    gpus,
                    grow=cfg.actors is None,
                    describe=_describe(target, by_group),
                    quiet=cfg.quiet,
                    unit_errors=(InputError,) if target.many else (),
                    share=MAX_PER_GPU if cfg.actors_per_gpu is None and gpus > 0 else 0,
                ) as pool,
                _progress(cfg, target, planned, summary.noun) as progress,
            ):
                while creator or pool.has_next():
                    for state in creator.ready(block=not pool.has_next()):
                        if state.status != "failed":
                            owner.check()
                            state.planned().begin(state.opened(), state.done, owner)  # a raster's stitcher follows its tiles
                            pool.submit(*_units_of(state))
                    if pool.has_next():
                        unit, result = pool.get_next()
                        state = by_group[unit.group]
                        if follow(state, unit.unit, result):
                            summary.items += unit.size
                            progress.unit_done(unit, result)
                summary.actors, summary.device, summary.actors_per_gpu = pool.most_ready, pool.device, pool.actors_per_device()
        finally:
            creator.close()
    summary.seconds = time.perf_counter() - started


def _units_of(state: InputState) -> list[RunUnit]:
    """An input's pending units for the pool; its worker job goes to Ray's object store once."""
    import ray

    source = state.planned()
    if state.job_ref is None:
        state.job_ref = ray.put(source.job(location.absolute(state.store)))
    return [RunUnit(state.input.name, u, source.size(u), state.job_ref) for u in state.pending]


def _describe(target: Target, by_group: dict[str, InputState]) -> Any:
    """A unit in the pool's messages: the source's words, after its input's name in a job."""
    if target.many:
        return lambda u: f"{u.group}: {by_group[u.group].planned().describe(u.unit)}"
    return lambda u: by_group[u.group].planned().describe(u.unit)


def _progress(cfg: RunConfig, target: Target, states: Sequence[InputState], noun: str) -> RunProgress:
    """What the run says as units finish (bar, `-v` lines, `--progress json`), counting the units done before it."""
    total_units = sum(len(s.units) for s in states)
    total_items = sum(s.planned().size(u) for s in states for u in s.units)
    left_units = sum(len(s.pending) for s in states)
    left_items = sum(s.planned().size(u) for s in states for u in s.pending)
    by_group = {s.input.name: s for s in states}
    describe = (lambda u: f"{u.group}: unit {u.id}") if target.many else (lambda u: by_group[u.group].planned().describe(u.unit))
    return RunProgress(
        total_units, total_items, total_units - left_units, total_items - left_items, noun, describe, lambda u: u.size, cfg.quiet, cfg.verbose, cfg.progress
    )


def _noun(kind: str) -> str:
    from segbatch.kinds import kind as kind_of

    return kind_of(kind).noun


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
