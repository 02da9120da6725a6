"""The elastic actor pool over no-op workers: every unit once, lost actors replaced, errors by type, growth."""

import os
import time

import pytest

from segbatch import errors
from segbatch.engine import pool as pool_module
from segbatch.engine.pool import ActorPool, UnitQueue


def _worker(die_on=None, die_once_marker=None, raise_on=None, sleep=0.0):
    """A no-op worker class (local, so Ray ships it by value); it can die or raise on chosen units, once or always."""

    class Worker:
        def __init__(self, job):
            import threading

            self.job = job
            self.lock = threading.Lock()
            self.running = self.most = 0

        def device_name(self):
            return "cpu"

        def process(self, unit):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                if unit == die_on and (die_once_marker is None or not os.path.exists(die_once_marker)):
                    if die_once_marker is not None:
                        open(die_once_marker, "w").close()
                    os._exit(1)  # the process dies under the unit, as a node lost or an OOM kill would
                if unit == raise_on:
                    raise self.job  # the job is the exception to raise
                time.sleep(sleep)
                return {"unit": unit, "pid": os.getpid(), "most": self.most}
            finally:
                with self.lock:
                    self.running -= 1

    return Worker


def queue_of(n):
    q = UnitQueue()
    for unit in range(n):
        q.append(f"u{unit}")
    return q


def test_each_actor_goes_on_along_its_own_stretch_of_the_queue():
    q = queue_of(10)
    last = {}

    def take(actor):
        place, unit = q.take(last.get(actor), set(last.values()))
        assert unit == f"u{place}"
        last[actor] = place
        return place

    assert take("a") == 0  # the first actor starts at the start
    assert take("b") == 5  # the next at the middle of what a is heading into
    assert [take("a") for _ in range(4)] == [1, 2, 3, 4]
    assert [take("b") for _ in range(2)] == [6, 7]
    assert take("a") == 9  # its next (5) is gone: the middle of the run b heads into, [8, 9]
    assert take("b") == 8
    assert not q


def test_a_new_stretch_starts_at_a_run_no_actor_heads_into():
    q = queue_of(10)
    for place in (0, 1, 2, 6):
        q.waiting.pop(place)  # done before (a resumed run's queue has holes) or taken
    assert q.take(None, {6}) == (3, "u3")  # [3, 5] and [7, 9]: the earliest longest; nothing heads into it
    assert q.take(6, {3, 6}) == (7, "u7")


def test_units_put_back_go_first_with_their_place():
    q = queue_of(4)
    assert q.take(None, set()) == (0, "u0")
    q.put_back(0, "u0")  # its actor was lost
    assert len(q) == 4
    assert q.take(2, {2}) == (0, "u0")
    assert q.take(0, {0}) == (1, "u1")


def test_every_unit_is_taken_once_whatever_the_order_actors_ask_in():
    import random

    rng = random.Random(7)
    q, last, taken = queue_of(200), {}, []
    while q:
        actor = rng.randrange(5)
        place, unit = q.take(last.get(actor), set(last.values()))
        last[actor] = place
        taken.append(unit)
    assert sorted(taken) == sorted(f"u{i}" for i in range(200))


def drain(pool, units):
    for unit in units:
        pool.submit(unit)
    out = {}
    while pool.has_next():
        unit, result = pool.get_next()
        assert unit not in out, f"unit {unit} came back twice"
        out[unit] = result
    return out


def test_every_unit_once_and_at_most_two_in_flight_per_actor(ray_address):
    with ActorPool(_worker(sleep=0.05), "job", actors=3, cpus=1, gpus=0) as pool:
        out = drain(pool, range(40))
        assert 1 <= pool.most_ready <= 3 and pool.device == "cpu"
    assert sorted(out) == list(range(40))
    assert {r["unit"] for r in out.values()} == set(range(40))
    assert max(r["most"] for r in out.values()) <= pool_module.IN_FLIGHT_PER_ACTOR


def test_a_lost_actor_is_replaced_and_its_unit_redone(ray_address, tmp_path):
    marker = tmp_path / "died"
    with ActorPool(_worker(die_on=5, die_once_marker=str(marker), sleep=0.02), "job", actors=2, cpus=1, gpus=0) as pool:
        out = drain(pool, range(12))
        assert pool.lost and set(pool.lost.values()) == {1}  # the units in flight on the lost actor, each redone once
    assert marker.exists() and sorted(out) == list(range(12))


def test_a_unit_that_always_kills_its_worker_stops_the_run(ray_address):
    with ActorPool(_worker(die_on=1), "job", actors=1, cpus=1, gpus=0, retries=1, describe=lambda u: f"unit {u}") as pool:
        for unit in range(3):
            pool.submit(unit)
        # whichever unit shares the dying actor with unit 1 when its retries run out (0 or 2: that depends on timing) is named
        with pytest.raises(errors.RunError, match=r"unit [012] lost its worker 2 times"):
            while pool.has_next():
                pool.get_next()


@pytest.mark.parametrize(
    ("raised", "expected", "message"),
    [(errors.InputError("bad frame data"), errors.InputError, "^bad frame data$"), (ValueError("boom"), errors.RunError, "^unit 2 failed: boom$")],
)
def test_an_error_in_a_unit_stops_the_run_as_its_type(ray_address, raised, expected, message):
    with ActorPool(_worker(raise_on=2), raised, actors=1, cpus=1, gpus=0, describe=lambda u: f"unit {u}") as pool:
        for unit in range(4):
            pool.submit(unit)
        with pytest.raises(expected, match=message) as caught:
            while pool.has_next():
                pool.get_next()
    assert type(caught.value) is expected


def test_errors_that_concern_a_unit_alone_come_back_as_its_result_and_the_rest_finish(ray_address):
    raised = errors.InputError("clip 2 has no frames")
    with ActorPool(_worker(raise_on=2), raised, actors=1, cpus=1, gpus=0, unit_errors=(errors.InputError,)) as pool:
        out = drain(pool, range(5))
    assert sorted(out) == list(range(5))
    assert isinstance(out[2], errors.InputError) and str(out[2]) == "clip 2 has no frames"
    assert all(out[u]["unit"] == u for u in (0, 1, 3, 4))
    # other errors still stop the job: a bug is not one input's problem
    with ActorPool(_worker(raise_on=1), ValueError("boom"), actors=1, cpus=1, gpus=0, unit_errors=(errors.InputError,)) as pool:
        with pytest.raises(errors.RunError, match="boom"):
            drain(pool, range(3))


def test_the_pool_grows_into_free_room_only_when_asked_and_there_is_work(ray_address):
    for grow, queued, started in ((True, 10, 2), (False, 10, 1), (True, 0, 1)):
        with ActorPool(_worker(), "job", actors=1, cpus=1, gpus=0, grow=grow) as pool:
            for unit in range(queued):
                pool.queue.append(unit)  # work waiting (not sent: no actor is ready yet)
            while pool.starting:  # the first actor placed and started
                pool._on_started(next(iter(pool.starting)))
            pool._last_grow = 0.0  # the growth check is due
            pool._maybe_grow()
            assert len(pool.actors) == started, (grow, queued)
            out = drain(pool, [])
        assert sorted(out) == list(range(queued))


def test_get_next_without_work_is_a_usage_error(ray_address):
    with ActorPool(_worker(), "job", actors=1, cpus=1, gpus=0) as pool, pytest.raises(ValueError):
        pool.get_next()


def test_a_worker_that_cannot_load_its_class_stops_the_run_at_once_with_the_real_error(ray_address):
    from tests.helpers.unimportable import Worker  # importable here, in the driver; not in any worker

    with ActorPool(Worker, "job", actors=2, cpus=1, gpus=0) as pool, pytest.raises(errors.InputError) as caught:
        drain(pool, range(3))
    assert str(caught.value) == "a worker could not start: ImportError: cannot import name '__version__' from 'segbatch' (unknown location)"
    assert pool._failures == 0  # not taken for actors lost while starting, retried, then "3 workers died while starting"


# what Ray says of an actor that died while starting (ActorDiedError's text, colours included), and the one line we make of it
CLASS_NOT_LOADED = (
    "The actor died because of an error raised in its creation task, \x1b[36mray::PipelineWorker.__init__()\x1b[39m (pid=13609, ip=192.0.2.2, "
    "actor_id=62af, repr=<segbatch.engine.pipeline.FunctionActorManager._create_fake_actor_class.<locals>.TemporaryActor object at 0x7f72>)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "RuntimeError: The actor with name PipelineWorker failed to import on the worker. This may be because needed library "
    "dependencies are not installed in the worker environment:\n\n"
    "\x1b[36mray::PipelineWorker.__init__()\x1b[39m (pid=13609, ip=192.0.2.2, actor_id=62af)\n"
    '  File "/work/main/segbatch/cli/main.py", line 13, in <module>\n'
    "    from segbatch import __version__\n"
    "ImportError: cannot import name '__version__' from 'segbatch' (unknown location)\n"
)
KILLED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: PipelineWorker\n\tactor_id: 62af\n\tpid: 13609\n"
    "\tname: segbatch-worker-1-0\n\tnamespace: 5d2c\n\tip: 192.0.2.2\n"
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker exit detail: killed by the memory monitor\n"
)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (CLASS_NOT_LOADED, "ImportError: cannot import name '__version__' from 'segbatch' (unknown location)"),
        (
            KILLED,
            "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker exit detail: killed by the memory monitor",
        ),
        ("The actor died unexpectedly before finishing this task.", "The actor died unexpectedly before finishing this task."),
    ],
)
def test_why_an_actor_died_while_starting_in_one_line(text, line):
    assert pool_module.start_failure(RuntimeError(text)) == line


def test_an_inputs_units_submitted_together_go_out_as_stretches(ray_address):
    with ActorPool(_worker(), "job", actors=2, cpus=1, gpus=0) as pool:
        while pool.starting:  # both actors placed and started: the units find them ready
            pool._on_started(next(iter(pool.starting)))
        pool.submit(*range(8))
        sent: dict[int, list[int]] = {}
        for slot, unit, _ in pool.in_flight.values():
            sent.setdefault(slot, []).append(unit)
        assert sorted(sorted(units) for units in sent.values()) == [[0, 1], [5, 6]]  # neighbours each (one at a time: 0, 2 / 1, 3)
        assert sorted(drain(pool, [])) == list(range(8))
