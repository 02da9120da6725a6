"""The elastic actor pool: units in, finished units out, whatever happens to the actors in between.

Symmetric, like Ray's own `ActorPool`: `submit` units, `get_next` finished
ones while `has_next`, `close` at the end. Inside, the pool starts its actors
(placement and model loading happen in the background), keeps at most
IN_FLIGHT_PER_ACTOR units on each ready actor (one near the end, so no unit
waits behind a busy actor; each actor goes on along a stretch of the queue,
`UnitQueue`), replaces an actor that dies (its node lost, its
process killed) wherever the cluster has room and puts its units back at the
front of the queue (each redone at most `retries` times: units are idempotent,
whole chunks then their ledger entry), and, unless its size was fixed, grows
while the cluster has free room for another actor.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from segbatch.engine.sharing import Device, helpers_wanted
from segbatch.errors import InputError, RunError, first_line, task_failure
from segbatch.progress import note, phase

IN_FLIGHT_PER_ACTOR = 2  # a queued unit hides the driver's round trip; the actor runs two units' pipelines side by side
UNIT_RETRIES = 3  # a unit whose worker dies is redone on a fresh one this many times
MAX_START_FAILURES = 3  # actors that die while starting before the run gives up
GROW_EVERY_S = 5.0  # how often the pool looks for room for more actors (and wakes to say it is waiting)
PLACEMENT_NOTE_AFTER_S = 30.0


class ActorPool:
    """Ray actors of one worker class, each built from the same job, running units.

    Args:
        worker: the actor class; `worker(job)` builds one, `.device_name()`
            says it is ready, `.process(unit)` runs a unit and returns its stats.
        job: what every actor is built from (sent once to each).
        actors: how many to start with.
        cpus, gpus: each actor's resources.
        grow: add actors while the cluster has free room for one more.
        describe: a unit in messages.
        quiet: no notes on stderr.
        unit_errors: errors a unit's worker raises that concern that unit
            alone: `get_next` returns them as the unit's result instead of
            stopping the run (a job of many inputs: one bad input among good ones).
        share: under `--actors-per-gpu auto`, the most actors one GPU may
            feed: helpers join a device while it idles (`segbatch.engine.sharing`);
            0: never.
    """

    def __init__(
        self,
        worker: type,
        job: Any,
        actors: int,
        cpus: float,
        gpus: float,
        grow: bool = False,
        describe: Callable[[Any], str] = str,
        retries: int = UNIT_RETRIES,
        quiet: bool = True,
        unit_errors: tuple[type[BaseException], ...] = (),
        share: int = 0,
    ) -> None:
        import ray

        self.cls: Any = ray.remote(max_restarts=0, max_task_retries=0)(_guarded(worker))
        self.job, self.cpus, self.gpus, self.grows = job, cpus, gpus, grow
        self.describe, self.retries, self.quiet, self.unit_errors = describe, retries, quiet, unit_errors
        self.actors: dict[int, Any] = {}  # slot -> actor handle (starting or ready)
        self.starting: dict[Any, int] = {}  # device_name() ref -> slot
        self.ready: set[int] = set()  # slots whose actor answered
        self.queue = UnitQueue()  # units not yet sent
        self.last: dict[int, int] = {}  # slot -> the place in the queue of the last unit sent to it
        self.in_flight: dict[Any, tuple[int, Any, int]] = {}  # process() ref -> (slot, unit, its place in the queue)
        self.placing: dict[Any, int] = {}  # __ray_ready__() ref -> slot, until one actor is up: start-up says "loading the model" then
        self.lost: dict[int, int] = {}  # id(unit) -> times its actor died under it
        self.device = ""  # what the first ready actor runs on
        self.most_ready = 0  # the largest number of ready actors at once
        self._failures = 0
        self._next_slot = 0
        self._last_grow = self._waiting_since = time.monotonic()
        self._noted = False
        self.share = share
        self.devices: dict[str, Device] = {}  # "node/gpu ids" -> the GPU and the actors feeding it
        self.device_of: dict[int, str] = {}  # ready slot -> its device's key (GPU runs)
        self.helper_of: dict[int, str] = {}  # slot of a helper (started or starting) -> the device it shares
        self._model_said = self._first_said = False  # start-up phases said (see segbatch.progress.StartUp)
        self.job_ref = ray.put(job)
        phase("actors", f"starting {actors} actor{'s' if actors != 1 else ''}", actors=actors)
        for _ in range(actors):
            self._start()

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, *units: Any) -> None:
        """Queue units (each sent to an actor as soon as one has room): an input's units together, so each actor gets a
        stretch of them, not every other one."""
        for unit in units:
            self.queue.append(unit)
        self._fill()

    def has_next(self) -> bool:
        """Whether a unit is still queued or running."""
        return bool(self.queue or self.in_flight)

    def get_next(self) -> tuple[Any, Any]:
        """The next unit to finish, and what its worker returned (in completion order).

        A unit whose actor died is redone elsewhere; an error the unit's
        worker raised stops the run, as its own type when it is ours
        (InputError: exit 2) and as a RunError otherwise, unless it is one of
        `unit_errors` (then it is the unit's result).
        """
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not self.has_next():
            raise ValueError("get_next() with no unit queued or running")
        while True:
            self._maybe_grow()
            ready, _ = ray.wait([*self.in_flight, *self.starting, *self.placing], num_returns=1, timeout=GROW_EVERY_S)
            if not ready:
                self._note_waiting()
                continue
            ref = ready[0]
            if ref in self.placing:
                self._on_placed(ref)
                continue
            if ref in self.starting:
                self._on_started(ref)
                continue
            slot, unit, place = self.in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as exc:
                failure = task_failure(exc, self.describe(unit))
                if self.unit_errors and isinstance(failure, self.unit_errors):
                    self._fill()
                    return unit, failure
                raise failure from None
            except RayActorError:
                self._on_lost(slot, unit, place)
                continue
            self._account(slot, result)
            self._fill()
            return unit, result

    def close(self) -> None:
        """Stop every actor (units still running are abandoned: the ledger says they are not finished)."""
        import ray

        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.ready.clear()
        self.starting.clear()
        self.placing.clear()

    # inside

    def _start(self, device: str | None = None) -> None:
        """Start an actor; with `device` (a key of self.devices), a helper: a CPU on that GPU's node, using that GPU."""
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        name = f"segbatch-worker-{os.getpid()}-{slot}"
        if device is None:
            actor = self.cls.options(num_cpus=self.cpus, num_gpus=self.gpus, name=name, max_concurrency=IN_FLIGHT_PER_ACTOR).remote(self.job_ref)
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            shared = self.devices[device]
            where = NodeAffinitySchedulingStrategy(shared.node, soft=False)
            options = {"num_cpus": self.cpus, "num_gpus": 0, "name": name, "max_concurrency": IN_FLIGHT_PER_ACTOR, "scheduling_strategy": where}
            actor = self.cls.options(**options).remote(self.job_ref, shared.gpus)
            self.helper_of[slot] = device
        self.actors[slot] = actor
        if not self.ready and not self._model_said:
            self.placing[actor.__ray_ready__.remote()] = slot  # the worker's constructor returned; it loads the model on device_name()
        self.starting[actor.device_name.remote()] = slot

    def _on_started(self, ref: Any) -> None:
        """The actor answered (ready), or died starting (replaced; or the run stops when its constructor raised)."""
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
        except RayActorError as exc:
            if exc.actor_init_failed:
                # its class could not even be loaded there (a worker that imports another segbatch, a missing dependency): the
                # environment's fault, the same on every worker; Ray reports it as the text of a traceback
                raise InputError(f"a worker could not start: {start_failure(exc)}") from None
            self._failures += 1
            if self._failures >= MAX_START_FAILURES:
                raise RunError(f"{self._failures} workers died while starting; the last: {start_failure(exc)}") from None
            self._replace(slot)  # lost while being placed or started (its node went away, an OOM kill): try again elsewhere
            return
        if slot in self.actors:
            self.ready.add(slot)
            self.most_ready = max(self.most_ready, len(self.ready))
            self._place(slot)
        self._fill()

    def _place(self, slot: int) -> None:
        """On a GPU run, which GPU a ready actor feeds (helpers: the one they share), counted per device."""
        import ray

        if not self.gpus and slot not in self.helper_of:
            return
        node, gpus = ray.get(self.actors[slot].placement.remote())
        key = self.helper_of.get(slot) or f"{node}/{gpus}"
        if key not in self.devices:
            cpus = next((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n["NodeID"] == node), 0.0) if self.share else 0.0  # type: ignore[no-untyped-call]
            self.devices[key] = Device(node=node, gpus=gpus, owner=slot, node_cpus=cpus)
        self.devices[key].joined(slot)
        self.device_of[slot] = key

    def _account(self, slot: int, result: Any) -> None:
        """A finished unit's model-stage seconds, to its device; under `auto`, a device that idles gets helpers."""
        key = self.device_of.get(slot)
        if key is None or not isinstance(result, dict):
            return
        self.devices[key].finished(result.get("stages", {}))
        if not self.share or not self.queue:
            return
        now = time.monotonic()
        for shared, device in list(self.devices.items()):
            wanted = 0 if device.starting else helpers_wanted(device.busy(now), len(device.actors), self.share)
            for _ in range(min(wanted, self._cpu_room(device))):
                device.starting += 1
                self._start(shared)

    def _cpu_room(self, device: Device) -> int:
        """Helpers that still fit on `device`'s node: its CPUs less this pool's actors there (no call to the cluster once they
        fill it), and no more than the cluster has free (other jobs)."""
        import ray

        ours = sum(len(d.actors) + d.starting for d in self.devices.values() if d.node == device.node) * self.cpus
        room = int((device.node_cpus - ours) / self.cpus + 1e-9)
        if room <= 0:
            return 0
        free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        return max(0, min(room, int(free.get("CPU", 0.0) / self.cpus + 1e-9)))

    def actors_per_device(self) -> list[int]:
        """The most actors that fed each GPU at once (empty on CPUs)."""
        return sorted((d.most for d in self.devices.values()), reverse=True)

    def _on_placed(self, ref: Any) -> None:
        """An actor is up (its process started, its class imported): the model loads next (`device_name`), unless it died."""
        import ray
        from ray.exceptions import RayActorError

        self.placing.pop(ref)
        try:
            ray.get(ref)
        except RayActorError:
            return  # its device_name() says so, and it is replaced there
        self._say_model()

    def _say_model(self) -> None:
        if not self._model_said:
            self._model_said = True
            self.placing.clear()
            phase("model", "loading the model")

    def _on_lost(self, slot: int, unit: Any, place: int) -> None:
        key = id(unit)
        self.lost[key] = self.lost.get(key, 0) + 1
        if self.lost[key] > self.retries:
            raise RunError(f"{self.describe(unit)} lost its worker {self.lost[key]} times (out of memory?); lower --batch-size and finish with --resume")
        self.queue.put_back(place, unit)
        if self._replace(slot):
            note(f"warning: a worker was lost (node gone or process killed); its units are redone on the others ({self.describe(unit)})", self.quiet)
        self._fill()

    def _replace(self, slot: int) -> bool:
        """Retire a dead actor and start another in its place; False when the slot was replaced already."""
        import ray

        actor = self.actors.pop(slot, None)
        if actor is None:
            return False
        self.ready.discard(slot)
        self.last.pop(slot, None)
        ray.kill(actor, no_restart=True)
        shared = self.helper_of.pop(slot, None)
        key = self.device_of.pop(slot, None)
        device = self.devices.get(key) if key is not None else None
        if device is not None:
            device.actors.discard(slot)
            holders = sorted(s for s in device.actors if s not in self.helper_of)  # others Ray gave a share of the GPU (N per GPU)
            if device.owner == slot and holders:
                device.owner = holders[0]
            elif device.owner == slot:  # its GPU is free in Ray's accounting now: its helpers must not stay on it
                del self.devices[key]  # type: ignore[arg-type]
                for helper in sorted(device.actors):
                    self._replace(helper)
        self._start(shared if shared in self.devices else None)
        return True

    def _fill(self) -> None:
        """Send queued units to ready actors: IN_FLIGHT_PER_ACTOR each while many remain, one each near the end."""
        busy: dict[int, int] = {}
        for slot, *_ in self.in_flight.values():
            busy[slot] = busy.get(slot, 0) + 1
        for slot in sorted(self.ready):
            limit = IN_FLIGHT_PER_ACTOR if len(self.queue) >= len(self.ready) else 1
            while self.queue and busy.get(slot, 0) < limit:
                place, unit = self.queue.take(self.last.get(slot), set(self.last.values()))
                self.in_flight[self.actors[slot].process.remote(unit)] = (slot, unit, place)
                self.last[slot] = place
                busy[slot] = busy.get(slot, 0) + 1
                if not self._first_said:
                    self._say_model()
                    self._first_said = True
                    phase("first_unit", f"first unit running on {self.device}", device=self.device)

    def _maybe_grow(self) -> None:
        """Start one more actor when the cluster has room for it now (none still starting, work for it queued)."""
        import ray

        if not self.grows or time.monotonic() - self._last_grow < GROW_EVERY_S:
            return
        self._last_grow = time.monotonic()
        if self.starting or len(self.queue) <= len(self.actors):
            return
        free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        if free.get("CPU", 0.0) + 1e-9 >= self.cpus and free.get("GPU", 0.0) + 1e-9 >= self.gpus:
            self._start()

    def _note_waiting(self) -> None:
        if not self.ready and not self._noted and time.monotonic() - self._waiting_since > PLACEMENT_NOTE_AFTER_S:
            note(f"waiting for the cluster to place actors ({self.cpus:g} CPU, {self.gpus:g} GPU each); it may be busy", self.quiet)
            self._noted = True


class UnitQueue:
    """Units waiting for an actor, by the order they came in; an actor goes on with the unit after the last one it got.

    Neighbouring units share work when one actor runs them in turn: a video's
    decoder goes on where the last unit stopped (no seek, no reference frames
    decoded again), a raster's overlapping tiles find their shared blocks in
    GDAL's cache. So each actor works along a stretch of the queue; one whose
    next unit is gone (taken, or never queued) starts a new stretch at the
    start of the longest run of waiting units, or at its middle when another
    actor is heading into it (its last unit is the one before). Units put back
    (their actor was lost) go first, to anyone.
    """

    def __init__(self) -> None:
        self.waiting: dict[int, Any] = {}  # place -> unit
        self.again: deque[tuple[int, Any]] = deque()  # put back: (place, unit)
        self.count = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.again)

    def append(self, unit: Any) -> None:
        self.waiting[self.count] = unit
        self.count += 1

    def put_back(self, place: int, unit: Any) -> None:
        """A unit `take` gave before (its actor was lost): the next `take` gives it again."""
        self.again.append((place, unit))

    def take(self, after: int | None, heading: set[int]) -> tuple[int, Any]:
        """(place, unit) for an actor whose last unit was at `after` (None: none yet); `heading`: every actor's last place."""
        if self.again:
            return self.again.popleft()
        if after is not None and after + 1 in self.waiting:
            return after + 1, self.waiting.pop(after + 1)
        start, length = self._longest_run()
        at = start + length // 2 if start - 1 in heading else start
        return at, self.waiting.pop(at)

    def _longest_run(self) -> tuple[int, int]:
        """(first place, length) of the longest run of consecutive waiting places; the earliest of equal ones."""
        best = (0, 0)
        places = sorted(self.waiting)
        first = 0
        for i in range(1, len(places) + 1):
            if i == len(places) or places[i] != places[i - 1] + 1:
                if i - first > best[1]:
                    best = (places[first], i - first)
                first = i
        return best


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^[A-Za-z_][\w.]*: ")  # a traceback's closing line, "ImportError: cannot import name ..."
_RAY_DETAILS = re.compile(r"^(class_name|actor_id|pid|name|namespace|ip): ")  # the fields Ray lists under "The actor died ..."


def start_failure(exc: BaseException) -> str:
    """Why an actor died while starting, in one line: the exception its worker raised (the last `Name: message` line of the
    traceback Ray passes on as text, which names the innermost error), else Ray's own reason (an OOM kill, a lost node)."""
    lines = [line.rstrip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line) and not line.startswith(("File ", "Traceback"))]
    if raised:
        return raised[-1]
    reasons = [line.strip() for line in lines[1:] if not _RAY_DETAILS.match(line.strip())]
    return reasons[0] if reasons else first_line(exc)


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
