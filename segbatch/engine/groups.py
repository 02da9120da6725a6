"""A run's inputs on the driver: each planned as its own source, its store prepared, created, and finished.

A run of one input is a job of one whose store is the root itself; a job
of many gives each input a group (segbatch.engine.target.Target decides
which). What differs is only what a failure does: in a job an input that
cannot be planned, prepared, created, followed or finished fails alone and
the others go on; in a run of one input it is the run's failure (`strict`).
Planning, preparing and creating are spread over threads (header reads,
~25 ms of Zarr metadata per group: made beside inference for big jobs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from segbatch import location
from segbatch.engine.job import RunConfig, config_digest, software_versions
from segbatch.engine.outcome import JobSummary, RunSummary
from segbatch.engine.source import Source, Unit
from segbatch.engine.target import Target
from segbatch.errors import InputError, SegbatchError, first_line
from segbatch.inputs import Input, location_digest, sanitize_name
from segbatch.jobstore import is_job, job_attrs, live_inputs
from segbatch.lease import LeaseLostError, built
from segbatch.owner import Owner
from segbatch.store import base_attrs, check_resumable, finished_units, open_store, store_attrs, update_attrs

if TYPE_CHECKING:
    from zarr import Group

PLAN_THREADS = 16  # inputs whose headers are read at once (I/O bound: local disks, object stores)


@dataclass
class InputState:
    """What the driver knows of one input during the run."""

    input: Input
    store: Any  # where its store is: the root (one input) or its group (segbatch.engine.target.Target.store_of)
    strict: bool = False  # a run of one input: its failure is the run's (raised), not the input's alone
    status: str = "pending"  # pending | complete | failed
    error: str | None = None
    bad_input: bool = True  # what failed it was the input (exit 2), not the run (exit 1)
    source: Source[Any] | None = None
    units: list[Unit] = field(default_factory=list)
    pending: list[Unit] = field(default_factory=list)  # the units this run sends (not in the ledger when it started)
    left: int = 0  # of those, not finished yet
    root: Group | None = None  # its store or group, open for writing (while the run goes on)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # its ledger when the run started
    layout: Any = None  # a new store's layout and attributes, until it is created
    attrs: Any = None
    job_ref: Any = None  # its worker job in Ray's object store, put once

    def fail(self, cause: BaseException) -> None:
        """The input failed: raised where it is the run's failure (one input), else recorded (the first cause is kept)."""
        if self.strict:
            raise cause
        if self.status != "failed":
            self.status, self.error, self.bad_input = "failed", first_line(cause), isinstance(cause, InputError)

    def entry(self) -> dict[str, Any]:
        """Its entry in a job root's `inputs`."""
        out: dict[str, Any] = {"name": self.input.name, "path": location.redact(location.absolute(self.input.location)), "status": self.status}
        return out | ({"error": self.error} if self.error else {})

    def planned(self) -> Source[Any]:
        assert self.source is not None
        return self.source

    def opened(self) -> Group:
        """Its store, made or reopened (every input that goes on has one)."""
        assert self.root is not None
        return self.root


def new_states(target: Target, inputs: Sequence[Input]) -> list[InputState]:
    return [InputState(i, target.store_of(i.name), strict=not target.many) for i in inputs]


def input_config(cfg: RunConfig, state: InputState) -> RunConfig:
    """One input's options: the run's, with that input, and its store (the root, or its group) as `out`."""
    return replace(cfg, input=state.input.location, out=state.store)


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


def fingerprint(cfg: RunConfig, model_sha256: str, source: Source[Any]) -> dict[str, Any]:
    """The settings that decide an input's output bits; --resume requires them unchanged (and names what differs)."""
    return model_fingerprint(cfg, model_sha256) | source.fingerprint()


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
        # segbatch calibrate's temperature and record, only when it ran: uncalibrated stores are as before
        **({"temperature": ckpt.calibration_temperature, "calibration": ckpt.spec.extra["calibration"]} if "calibration" in ckpt.spec.extra else {}),
    }


def plan(cfg: RunConfig, ckpt: Any, make_source: Callable[[RunConfig, Any], Source[Any]], states: Sequence[InputState]) -> None:
    """Each input's source, planned in parallel threads (an input that cannot be planned fails alone in a job)."""

    def one(state: InputState) -> None:
        try:
            state.source = make_source(input_config(cfg, state), ckpt)
        except (SegbatchError, OSError) as exc:
            state.fail(exc)

    _each(one, states)


def resume_states(
    cfg: RunConfig, target: Target, inputs: Sequence[Input], config: dict[str, Any], add_inputs: bool
) -> tuple[list[InputState], list[InputState]]:
    """--resume of a job: the inputs still to do (incomplete groups, earlier failures, added inputs) and those complete before.

    The store's list of inputs must be the one given now: an input it has
    that is not given is refused (a job never drops a group), an input given
    that it lacks is refused unless --add-inputs.
    """
    root = open_store(cfg.out)
    if not is_job(root):
        raise InputError(f"{cfg.out} holds one input, not a job of many; resume it with that input as --input")
    attrs = job_attrs(root)
    check_resumable(attrs, config)
    recorded = live_inputs(cfg.out, attrs)
    given = {location.redact(location.absolute(i.location)): i for i in inputs}  # as the store records them
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
            f"cannot resume: {len(added)} input(s) are not in {cfg.out} (first: {location.redact(location.absolute(added[0].location))}); "
            "pass --add-inputs to add them, or --overwrite to start again"
        )
    taken = {e["name"].casefold() for e in recorded}
    states, done = [], []
    for e in recorded:
        named = replace(given[e["path"]], name=e["name"])  # names are the store's: they never change
        state = InputState(named, target.store_of(named.name))
        if e["status"] == "complete":
            state.status = "complete"
            done.append(state)
        else:
            states.append(state)
    for i in added:
        name = i.name if i.name.casefold() not in taken else sanitize_name(f"{i.name}-{location_digest(location.absolute(i.location))}")
        taken.add(name.casefold())
        states.append(InputState(replace(i, name=name), target.store_of(name)))
    return states, done


def prepare(cfg: RunConfig, ckpt: Any, states: Sequence[InputState], actors: int, owner: Owner) -> None:
    """Each planned input's units: from its store's attributes and ledger (--resume: checked, reopened as this run's), or from
    the layout its new store will have (created by `Creator`)."""

    def one(state: InputState) -> None:
        source = state.planned()
        icfg = input_config(cfg, state)
        config = fingerprint(icfg, ckpt.sha256, source)
        try:
            if cfg.resume and built(state.store):
                found = open_store(state.store)
                source.check_resume(found, store_attrs(found))
                state.root, attrs = owner.reopen(config, at=state.store)
                state.done = finished_units(state.root)
            else:
                layout, attrs = source.new_store(actors)
                base = base_attrs(attrs.pop("source"), model_attrs(ckpt), cfg.samples, cfg.seed, config, owner.run)
                attrs = base | {"fingerprint": config_digest(config)} | attrs
                state.layout, state.attrs = layout, attrs
            state.units = list(source.units(attrs))
            state.pending = [u for u in state.units if u.id not in state.done]
            state.left = len(state.pending)
        except (SegbatchError, OSError) as exc:
            state.fail(exc)  # a group reopened for it is marked failed at the end (`finish`)

    _each(one, [s for s in states if s.source is not None])


class Creator:
    """The new stores, created by background threads while the pool works, handed out in the order given (largest first).

    A run of one input creates its store (replacing the old one for
    --overwrite) before any unit runs: `create_now`. A job's groups are made
    beside inference: made up front for 10,000 inputs that is minutes
    before the first unit runs.
    """

    def __init__(self, owner: Owner, states: Sequence[InputState]) -> None:
        self.owner = owner
        self.threads = ThreadPoolExecutor(min(PLAN_THREADS, max(1, len(states))))
        self.waiting: deque[tuple[InputState, Future[None]]] = deque((state, self.threads.submit(self._create, state)) for state in states)

    def _create(self, state: InputState) -> None:
        if state.root is not None:
            return  # resumed (or a run of one input's, made already)
        try:
            state.root = self.owner.create(state.layout, state.attrs, at=state.store, group=True, consolidated=False)
        except (SegbatchError, OSError) as exc:
            state.fail(exc)
        state.layout = state.attrs = None

    @staticmethod
    def create_now(owner: Owner, state: InputState) -> None:
        """The store of a run of one input: the root, replacing what --overwrite replaces, made before the pool starts."""
        if state.root is None and state.source is not None:
            state.root = owner.replace(lambda: owner.create(state.layout, state.attrs))
            state.layout = state.attrs = None

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def ready(self, block: bool) -> list[InputState]:
        """The stores created since the last call, in order (with `block`, wait for at least one)."""
        out: list[InputState] = []
        while self.waiting and (self.waiting[0][1].done() or (block and not out)):
            state, future = self.waiting.popleft()
            future.result()
            out.append(state)
        return out

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)


def follow(state: InputState, unit: Unit, result: Any) -> bool:
    """A unit of the input came back (its ledger entry, or the error that failed it alone): the source follows it (a raster
    stitches what the tile completes). False when the input has failed (its later units are not followed)."""
    state.left -= 1
    if isinstance(result, BaseException):
        state.fail(result)
    if state.status == "failed":
        return False
    try:
        state.planned().unit_done(unit, result)
    except LeaseLostError:
        raise
    except SegbatchError as exc:  # its stitch failed: that input alone (in a job)
        state.fail(exc)
        return False
    return True


def finish(states: Sequence[InputState], summary: RunSummary, owner: Owner) -> None:
    """Each input whose units are all done: its store finished (finalised, or stitched); in a job the others fail alone."""
    many = isinstance(summary, JobSummary)
    for state in states:
        if state.status == "failed":
            if state.root is not None:  # its group says so too (not "running" for ever)
                update_attrs(state.root, status="failed", error=state.error)
            continue
        source = state.planned()
        part = RunSummary(units=len(state.units), noun=summary.noun, seconds=summary.seconds, actors=summary.actors, device=summary.device) if many else summary
        try:
            source.finish(state.opened(), state.units, state.pending, part, owner)
        except LeaseLostError:
            raise
        except (SegbatchError, OSError) as exc:
            state.fail(exc)
            update_attrs(state.root, status="failed", error=state.error)
            continue
        state.status = "complete"
        if many:
            if part.stitch_seconds is not None:
                summary.stitch_seconds = (summary.stitch_seconds or 0.0) + part.stitch_seconds
            summary.problems += [{**p, "input": state.input.name} for p in part.problems]
    owner.check()


def _each(fn: Callable[[InputState], None], states: Sequence[InputState]) -> None:
    with ThreadPoolExecutor(min(PLAN_THREADS, max(1, len(states)))) as pool:
        list(pool.map(fn, states))
