"""`--actors-per-gpu`: how many actors a GPU gets (pure pieces; the pool adding helpers on a cluster: tests/cli/test_cluster.py)."""

from __future__ import annotations

import pytest

from segbatch.engine.session import pool_size
from segbatch.engine.sharing import MAX_PER_GPU, UNITS_PER_LOOK, Device, helpers_wanted, memory_share
from segbatch.errors import InputError


@pytest.mark.parametrize(
    ("busy", "actors", "wanted"),
    [
        (None, 1, 0),  # not measured yet
        (0.95, 1, 0),  # idle under 10%: enough
        (0.9, 1, 0),
        (0.45, 1, 1),  # two actors fill it
        (0.3, 1, 2),  # 0.9 / 0.3 = 3 actors
        (0.6, 2, 1),  # 0.3 per actor: 3 actors
        (0.0, 1, MAX_PER_GPU - 1),  # host-bound: as many as a GPU may have
        (0.1, MAX_PER_GPU, 0),  # it has the most already
    ],
)
def test_helpers_fill_an_idle_device_at_the_measured_rate_per_actor(busy, actors, wanted):
    assert helpers_wanted(busy, actors, MAX_PER_GPU) == wanted


def test_a_device_is_judged_on_units_finished_since_its_last_actor_joined():
    d = Device(node="n", gpus="0", owner=0)
    d.joined(0)
    d.since -= 10.0  # ten seconds ago
    for _ in range(UNITS_PER_LOOK - 1):
        d.finished({"model": 1.0, "read": 3.0})
    assert d.busy(d.since + 10.0) is None  # too few units to say
    d.finished({"model": 1.0})
    assert d.busy(d.since + 10.0) == pytest.approx(UNITS_PER_LOOK / 10.0)
    d.starting = 1
    d.joined(1)  # a helper joined: the count starts again, for two actors now
    assert d.starting == 0 and d.most == 2 and d.units == 0 and d.busy(d.since + 1.0) is None


def test_each_actor_gets_its_share_of_the_cards_memory_budget():
    assert memory_share(1) == 1.0 and memory_share(4) == 0.25
    assert memory_share(None) == 1 / MAX_PER_GPU  # auto: fixed before the pool decides, so the bits never depend on it


@pytest.mark.parametrize(
    ("resources", "per_gpu", "expected"),
    [
        ({"CPU": 16.0, "GPU": 2.0}, 1, (2, 1.0)),
        ({"CPU": 16.0, "GPU": 2.0}, 3, (6, 1 / 3)),  # Ray packs three on each card
        ({"CPU": 4.0, "GPU": 2.0}, 3, (4, 1 / 3)),  # no more than the CPUs hold
        ({"CPU": 16.0, "GPU": 2.0}, None, (2, 1.0)),  # auto: an owner per card; the pool adds helpers
        ({"CPU": 4.0}, 3, (4, 0.0)),  # no GPUs: an actor per CPU
    ],
)
def test_pool_size_puts_n_actors_on_each_gpu(monkeypatch, resources, per_gpu, expected):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    assert pool_size(None, None, 1.0, 100, per_gpu) == expected


def test_gpus_per_actor_and_actors_per_gpu_are_one_question(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(InputError, match="give one of them"):
        pool_size(None, 0.5, 1.0, 100, None)
