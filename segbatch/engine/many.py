"""`segbatch run` over many inputs: one store with a group per input, one actor pool for every input's units.

The job plans its inputs' headers in parallel threads (each input its own
source, exactly as a single run would plan it), creates one group per
input laid out as that input's own store, and sends the units of all inputs
to one elastic pool, longest first, so the actors load the model once and
the tail is short. Dropout masks are seeded per input as in a single run
(run seed, frame or tile index) and units are cut the same way, so a group
holds the bits a run of that input alone gives with the same settings.

A bad input (unreadable, no frames, the wrong bands, a unit its worker
refuses) becomes that input's failure; the others finish, and the job's
summary and exit code say how many failed. `--resume` finishes exactly the
groups and units that are missing; a list of inputs that changed is refused
with the difference named, unless `--add-inputs` (new inputs only).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from segbatch import location
from segbatch.engine.job import JobBasics, RunConfig
from segbatch.engine.run import (
    RunSummary,
    demo_notice,
    fingerprint,
    model_attrs,
    model_fingerprint,
    new_store_attrs,
    own_target,
    recorded_outcome,
    replace_store,
    resolve_model,
    resume_store,
    say_ray,
)
from segbatch.engine.session import ray_session
from segbatch.engine.source import Source, SourceJob, UnitReport, unit_id
from segbatch.errors import InputError, SegbatchError, first_line
from segbatch.inputs import Input, location_digest, sanitize_name
from segbatch.jobstore import create_job_root, group_location, is_job, job_attrs, live_inputs, new_job_attrs, update_job
from segbatch.lease import Lease, LeaseKeeper, LeaseLostError, built
from segbatch.location import Location
from segbatch.progress import RunProgress
from segbatch.store import check_resumable, create_store, finished_units, open_store, update_attrs

PLAN_THREADS = 16  # inputs whose headers are read at once (I/O bound: local disks, object stores)
JOBS_PER_ACTOR = 256  # inputs' worker jobs an actor keeps after fetching them


@dataclass(frozen=True)
class GroupUnit:
    """A unit of one input of the job: its group, and the input's own unit."""

    group: str
    unit: Any  # the input's own unit: its row in the group's ledger is unit_id(unit)
    size: int  # items (frames, tiles) for progress and ordering
    job: Any  # the input's worker job, as a Ray object reference (sent once per input, fetched once per actor)


_jobs: OrderedDict[Any, SourceJob] = OrderedDict()  # per actor process: the inputs' jobs fetched so far
_jobs_lock = threading.Lock()


@dataclass(frozen=True)
class ManyJob(JobBasics):
    """The worker half of a job: the settings every input shares; each unit brings its input's own job by reference."""

    template: Any  # one input's job: the model step's settings, the same for every input of the job

    @property
    def float_dtype(self) -> str:
        return str(self.template.float_dtype)

    @property
    def resize(self) -> tuple[int, int] | None:
        return self.template.resize  # type: ignore[no-any-return]

    @property
    def model_outputs(self) -> tuple[str, ...]:
        return tuple(self.template.model_outputs)

    def check_node(self) -> None:
        """Nothing here: each input is checked on the node the first time one of its units is read (a bad one fails alone)."""

    def where(self, unit: GroupUnit) -> tuple[str, int]:
        return unit.group, unit_id(unit.unit)

    def read(self, unit: GroupUnit, report: UnitReport) -> Any:
        return self.input_job(unit).read(unit.unit, report)

    def to_model(self, x: Any) -> Any:
        return self.template.to_model(x)

    def placer(self, unit: GroupUnit, num_classes: int) -> Any:
        return self.input_job(unit).placer(unit.unit, num_classes)

    def unit_stats(self, unit: GroupUnit, report: UnitReport) -> dict[str, Any]:
        return self.input_job(unit).unit_stats(unit.unit, report)

    @staticmethod
    def input_job(unit: GroupUnit) -> SourceJob:
        """The unit's input's job: fetched (and its node check run) the first time this actor sees that input."""
        ref = unit.job
        if not _is_ref(ref):
            return ref  # type: ignore[no-any-return]  # outside Ray (tests): the job itself
        with _jobs_lock:
            known = _jobs.get(ref)
            if known is not None:
                _jobs.move_to_end(ref)
                return known
        import ray

        job: SourceJob = ray.get(ref)
        job.check_node()
        with _jobs_lock:
            _jobs[ref] = job
            while len(_jobs) > JOBS_PER_ACTOR:
                _jobs.popitem(last=False)
        return job


def _is_ref(value: Any) -> bool:
    return type(value).__name__ == "ObjectRef"


@dataclass
class InputState:
    """What the driver knows of one input during the job."""

    input: Input
    status: str = "pending"  # pending | complete | failed
    error: str | None = None
    bad_input: bool = True  # what failed it was the input (exit 2), not the run (exit 1)
    source: Source | None = None
    units: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # the units this run sends (not in the ledger when it started)
    left: int = 0  # of those, not finished yet
    root: Any = None  # its group, open for writing (while the job runs)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # its ledger when the job started
    layout: Any = None  # a new group's layout and attributes, until it is created
    attrs: Any = None

    def fail(self, cause: BaseException) -> None:
        """The first cause is kept (a failed input's later errors follow from it)."""
        if self.status != "failed":
            self.status, self.error, self.bad_input = "failed", first_line(cause), isinstance(cause, InputError)

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.input.name, "path": location.absolute(self.input.location), "status": self.status}
        return out | ({"error": self.error} if self.error else {})


@dataclass
class JobSummary(RunSummary):
    """A job's figures: its units' as a run's, and the inputs done and failed."""

    inputs: int = 0
    complete: int = 0
    already: int = 0  # inputs complete before this run (--resume)
    failed: list[InputState] = field(default_factory=list)

    def line(self, out: Location) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        failed = f", {len(self.failed)} failed" if self.failed else ""
        stitched = f", stitched in {self.stitch_seconds:.1f} s" if self.stitch_seconds is not None else ""
        already = f" ({self.already} done before)" if self.already else ""
        return (
            f"segmented {self.items} {self.noun}s of {self.complete} of {self.inputs} inputs{already}{failed} in {self.seconds:.1f} s "
            f"({rate:.2f} {self.noun}s/s) on {self.actors} actor(s) [{self.device}]{stitched} -> {out}"
        )


def run_many(
    cfg: RunConfig, inputs: Sequence[Input], spec: str, make_source: Callable[[RunConfig, Any], Source], add_inputs: bool = False, worker: type | None = None
) -> JobSummary:
    """Segment every input of `inputs` (one kind) into its group of the job store `cfg.out`.

    Everything that can refuse the job (the target, a changed list of inputs
    on --resume, the inputs' headers) is checked before Ray starts.
    """
    from segbatch.engine.session import pool_size
    from segbatch.model.checkpoint import load_checkpoint

    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if add_inputs and not cfg.resume:
        raise InputError("--add-inputs adds inputs to a job when resuming it; pass --resume too")
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model))
    demo_notice(cfg.model, cfg.quiet)  # the inputs were listed and the checkpoint read
    kind = inputs[0].kind
    config = job_fingerprint(cfg, ckpt.sha256, kind)
    with own_target(cfg, lease, ckpt.path, inputs=[i.location for i in inputs]) as keeper:
        root = None
        if built(cfg.out) and cfg.resume:
            root, states, done_before = _resume_states(cfg, inputs, config, add_inputs)
        else:
            states, done_before = [InputState(i) for i in inputs], []
        _plan(cfg, ckpt, make_source, states)
        every = done_before + states
        say_ray(cfg.address)
        with ray_session(cfg.address, cfg.verbose):
            max_units = sum(s.source.max_units for s in states if s.source is not None)
            actors, gpus = pool_size(cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, max(1, max_units))
            if root is not None:
                update_job(root, drop=("error",), status="running", inputs=[s.entry() for s in every], runs=[*job_attrs(root)["runs"], lease.run])
            else:
                attrs = new_job_attrs(kind, spec, [s.entry() for s in every], model_attrs(ckpt), cfg, config, lease.run)
                root = replace_store(cfg, keeper, lambda: create_job_root(cfg.out, attrs))
            job_root = root
            summary = JobSummary(noun="frame" if kind == "video" else "tile", inputs=len(every), already=len(done_before))
            with recorded_outcome(
                root, 0, "units", left=lambda: sum(s.left for s in states), fail=lambda why: update_job(job_root, status="failed", error=why)
            ):
                _prepare_groups(cfg, ckpt, [s for s in states if s.source is not None], actors, lease.run)
                _run_units(cfg, ckpt, states, actors, gpus, summary, keeper, worker)
                keeper.renew()
                keeper.check()
                _finish_groups(states, summary, keeper)
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
                    },
                )
        return summary


def _run_units(
    cfg: RunConfig, ckpt: Any, states: Sequence[InputState], actors: int, gpus: float, summary: JobSummary, keeper: LeaseKeeper, worker: type | None
) -> None:
    """Every planned input's pending units on one pool, the longest inputs first, each input's once its group exists."""
    from segbatch.engine.pipeline import PipelineWorker
    from segbatch.engine.pool import ActorPool

    run = keeper.lease.run
    planned = sorted((s for s in states if s.source is not None and s.status != "failed"), key=lambda s: -len(s.pending))
    for state in planned:
        if not state.pending:
            state.source.begin(state.root, state.done, keeper)  # type: ignore[union-attr]  # all its units were done before
    todo = [s for s in planned if s.pending]
    started = time.perf_counter()
    if todo:
        jobs = {s.input.name: _job_of(cfg, ckpt, s, run) for s in todo}
        job = ManyJob(**JobBasics.of(cfg, location.absolute(cfg.out), location.absolute(ckpt.path), run), template=jobs[todo[0].input.name])
        by_name = {s.input.name: s for s in states}
        groups = _Groups(cfg, todo)
        try:
            with (
                ActorPool(
                    worker or PipelineWorker,
                    job,
                    actors,
                    cfg.cpus_per_actor,
                    gpus,
                    grow=cfg.actors is None,
                    describe=lambda u: f"{u.group}: {by_name[u.group].source.describe(u.unit)}",  # type: ignore[union-attr]
                    quiet=cfg.quiet,
                    unit_errors=(InputError,),
                ) as pool,
                _progress(cfg, planned, summary.noun) as progress,
            ):
                while groups or pool.has_next():
                    for state in groups.ready(block=not pool.has_next()):
                        if state.status != "failed":
                            keeper.check()
                            state.source.begin(state.root, state.done, keeper)  # type: ignore[union-attr]  # a raster's stitcher follows its tiles
                            for unit in _units_of(state, jobs[state.input.name]):
                                pool.submit(unit)
                    if pool.has_next():
                        _unit_finished(*pool.get_next(), by_name, summary, progress)
                summary.actors, summary.device = pool.most_ready, pool.device
        finally:
            groups.close()
    summary.seconds = time.perf_counter() - started


def _unit_finished(unit: GroupUnit, result: Any, by_name: Mapping[str, InputState], summary: JobSummary, progress: RunProgress) -> None:
    """A unit came back: its input goes on (a raster stitches what the tile completes), or fails alone."""
    state = by_name[unit.group]
    state.left -= 1
    if isinstance(result, BaseException):
        state.fail(result)
    if state.status == "failed":
        return  # a failed input's later units are not followed (nor stitched)
    summary.items += unit.size
    progress.unit_done(unit, result)
    try:
        state.source.unit_done(unit.unit, result)  # type: ignore[union-attr]
    except LeaseLostError:
        raise
    except SegbatchError as exc:  # its stitch failed: that input alone
        state.fail(exc)


def job_fingerprint(cfg: RunConfig, model_sha256: str, kind: str) -> dict[str, Any]:
    """The settings every group shares (each group's own fingerprint adds its input's identity): --resume requires them unchanged."""
    if kind == "video":
        options = {"batch_size": cfg.batch_size, "frames": list(cfg.frames) if cfg.frames else None, "resize": list(cfg.resize) if cfg.resize else None}
    else:
        options = {"bands": list(cfg.bands) if cfg.bands else None, "tile": cfg.tile, "overlap": cfg.overlap}
    return model_fingerprint(cfg, model_sha256) | options | {"outputs": list(cfg.extra_outputs), "hwaccel": cfg.hwaccel, "input_kind": kind}


def _resume_states(cfg: RunConfig, inputs: Sequence[Input], config: dict[str, Any], add_inputs: bool) -> tuple[Any, list[InputState], list[InputState]]:
    """--resume: the job's root (open for writing), the inputs still to do (incomplete groups, earlier failures, added inputs)
    and those complete before, checked.

    The store's list of inputs must be the one given now: an input it has
    that is not given is refused (a job never drops a group), an input given
    that it lacks is refused unless --add-inputs.
    """
    root = open_store(cfg.out, mode="r+")
    if not is_job(root):
        raise InputError(f"{cfg.out} holds one input, not a job of many; resume it with that input as --input")
    attrs = job_attrs(root)
    check_resumable(attrs, config)
    recorded = live_inputs(cfg.out, attrs)
    given = {location.absolute(i.location): i for i in inputs}
    known = {e["path"] for e in recorded}
    dropped = [e for e in recorded if e["path"] not in given]
    if dropped:
        raise InputError(
            f"cannot resume: {len(dropped)} input(s) of {cfg.out} are not among the inputs given now (first: {dropped[0]['name']}, {dropped[0]['path']}); "
            "give the same inputs, or --overwrite to start again"
        )
    added = [i for path, i in given.items() if path not in known]
    if added and not add_inputs:
        raise InputError(
            f"cannot resume: {len(added)} input(s) are not in {cfg.out} (first: {location.absolute(added[0].location)}); "
            "pass --add-inputs to add them, or --overwrite to start again"
        )
    taken = {e["name"].casefold() for e in recorded}
    states, done = [], []
    for e in recorded:
        state = InputState(replace(given[e["path"]], name=e["name"]))  # names are the store's: they never change
        if e["status"] == "complete":
            state.status = "complete"
            done.append(state)
        else:
            states.append(state)
    for i in added:
        name = i.name if i.name.casefold() not in taken else sanitize_name(f"{i.name}-{location_digest(location.absolute(i.location))}")
        taken.add(name.casefold())
        states.append(InputState(replace(i, name=name)))
    return root, states, done


def _plan(cfg: RunConfig, ckpt: Any, make_source: Callable[[RunConfig, Any], Source], states: Sequence[InputState]) -> None:
    """Each input's source, planned in parallel threads; an input that cannot be planned fails alone."""

    def plan(state: InputState) -> None:
        try:
            state.source = make_source(input_config(cfg, state.input), ckpt)
        except (SegbatchError, OSError) as exc:
            state.fail(exc)

    with ThreadPoolExecutor(min(PLAN_THREADS, max(1, len(states)))) as pool:
        list(pool.map(plan, states))


def input_config(cfg: RunConfig, item: Input) -> RunConfig:
    """One input's options: the job's, with that input and its group as the store."""
    return replace(cfg, input=item.location, out=group_location(cfg.out, item.name))


def _prepare_groups(cfg: RunConfig, ckpt: Any, states: Sequence[InputState], actors: int, run: str) -> None:
    """Each planned input's units: from its group's attributes and ledger (--resume, checked as a single store is), or from the
    layout its new group will have (created later, beside inference: `_Groups`); failures stay the input's."""

    def prepare(state: InputState) -> None:
        assert state.source is not None
        icfg = input_config(cfg, state.input)
        config = fingerprint(icfg, ckpt.sha256, state.source)
        try:
            if location.exists(icfg.out):
                state.root, attrs = resume_store(icfg.out, state.source, config, run)
                state.done = finished_units(state.root)
            else:
                state.layout, attrs = new_store_attrs(icfg, state.source, ckpt, config, actors, run)
                state.attrs = attrs
            state.units = list(state.source.units(attrs))
            state.pending = [u for u in state.units if unit_id(u) not in state.done]
            state.left = len(state.pending)
        except (SegbatchError, OSError) as exc:
            state.fail(exc)  # a group reopened for it is marked failed at the end (_finish_groups)

    with ThreadPoolExecutor(min(PLAN_THREADS, max(1, len(states)))) as pool:
        list(pool.map(prepare, states))


class _Groups:
    """The new groups, created by background threads while the pool works, handed out in the order given (largest inputs first).

    Creating a group (a Zarr store of its own) costs the driver ~25 ms of
    Python; made up front for 10,000 inputs that is minutes before the first
    unit runs, made beside inference it is hidden behind the actors' work.
    """

    def __init__(self, cfg: RunConfig, states: Sequence[InputState]) -> None:
        def create(state: InputState) -> None:
            if state.root is not None:
                return  # resumed: its group exists
            try:
                state.root = create_store(input_config(cfg, state.input).out, state.layout, state.attrs, group=True, consolidated=False)
            except (SegbatchError, OSError) as exc:
                state.fail(exc)
            state.layout = state.attrs = None

        self.threads = ThreadPoolExecutor(min(PLAN_THREADS, max(1, len(states))))
        self.waiting = deque((state, self.threads.submit(create, state)) for state in states)

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def ready(self, block: bool) -> list[InputState]:
        """The groups created since the last call, in order (with `block`, wait for at least one)."""
        out: list[InputState] = []
        while self.waiting and (self.waiting[0][1].done() or (block and not out)):
            state, future = self.waiting.popleft()
            future.result()
            out.append(state)
        return out

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)


def _job_of(cfg: RunConfig, ckpt: Any, state: InputState, run: str) -> SourceJob:
    assert state.source is not None
    return state.source.job(location.absolute(input_config(cfg, state.input).out), location.absolute(ckpt.path), run)


def _units_of(state: InputState, job: SourceJob) -> list[GroupUnit]:
    """An input's pending units for the job's pool; its worker job goes to Ray's object store once."""
    import ray

    assert state.source is not None
    ref = ray.put(job)
    return [GroupUnit(state.input.name, u, state.source.size(u), ref) for u in state.pending]


def _items(state: InputState, units: Sequence[Any]) -> int:
    assert state.source is not None
    return sum(state.source.size(u) for u in units)


def _progress(cfg: RunConfig, states: Sequence[InputState], noun: str) -> RunProgress:
    planned = [s for s in states if s.source is not None]
    total_units = sum(len(s.units) for s in planned)
    total_items = sum(_items(s, s.units) for s in planned)
    left_units = sum(len(s.pending) for s in planned)
    left_items = sum(_items(s, s.pending) for s in planned)
    return RunProgress(
        total_units,
        total_items,
        total_units - left_units,
        total_items - left_items,
        noun,
        lambda u: f"{u.group}: unit {unit_id(u.unit)}",
        lambda u: u.size,
        cfg.quiet,
        cfg.verbose,
        cfg.progress,
    )


def _finish_groups(states: Sequence[InputState], summary: JobSummary, keeper: LeaseKeeper) -> None:
    """Each input whose units are all done: finish its group as a single run would (finalise, or stitch); others fail alone."""
    for state in states:
        if state.status == "failed":
            if state.root is not None:  # its group says so too (not "running" for ever)
                update_attrs(state.root, status="failed", error=state.error)
            continue
        assert state.source is not None
        part = RunSummary(units=len(state.units), noun=summary.noun, seconds=summary.seconds, actors=summary.actors, device=summary.device)
        try:
            state.source.finish(state.root, state.units, state.pending, part, keeper)
        except LeaseLostError:
            raise
        except (SegbatchError, OSError) as exc:
            state.fail(exc)
            update_attrs(state.root, status="failed", error=state.error)
            continue
        state.status = "complete"
        if part.stitch_seconds is not None:
            summary.stitch_seconds = (summary.stitch_seconds or 0.0) + part.stitch_seconds
        summary.problems += [{**p, "input": state.input.name} for p in part.problems]
    keeper.check()
