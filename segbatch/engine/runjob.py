"""The worker half of every run: the run's job (fence, model step) sent to each actor once, and units that bring their input's job.

A run of one input and a job of many send the same things: each unit names
its input and carries that input's `SourceJob` as a Ray object reference,
put once per input and fetched once per actor (its node check runs then,
so in a job a bad input fails alone). A run of one input also checks its
input when an actor starts, as a run has always refused a node that cannot
read it before any unit ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segbatch.engine.source import SourceJob, Unit
from segbatch.engine.step import ModelStep
from segbatch.lru import LruCache
from segbatch.owner import Fence

JOBS_PER_ACTOR = 256  # inputs' worker jobs an actor keeps after fetching them

_jobs: LruCache[Any, SourceJob[Any]] = LruCache(JOBS_PER_ACTOR)  # per actor process: the inputs' jobs fetched so far


@dataclass(frozen=True)
class RunUnit:
    """A unit of one input of the run: the input's group ("" for a run of one input), its own unit, its size and its job."""

    group: str
    unit: Unit  # the input's own unit: its row in the input's ledger is unit.id
    size: int  # items (frames, tiles, images) for progress and ordering
    job: Any  # the input's SourceJob, as a Ray object reference (or the job itself outside Ray)

    @property
    def id(self) -> int:
        return self.unit.id


@dataclass(frozen=True)
class RunJob:
    """What every actor of a run is built from: the fence every write passes, and the model step."""

    fence: Fence
    step: ModelStep
    first: Any = None  # a run of one input: its job (reference), checked when an actor starts
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)  # location.storage_variables(): never printed


def input_job(ref: Any) -> SourceJob[Any]:
    """An input's job: fetched (and its node check run) the first time this actor sees that input."""
    if not _is_ref(ref):
        return ref  # type: ignore[no-any-return]  # outside Ray (tests): the job itself
    return _jobs.get(ref, lambda: _fetched(ref))


def _fetched(ref: Any) -> SourceJob[Any]:
    import ray

    job: SourceJob[Any] = ray.get(ref)
    job.check_node()
    return job


def _is_ref(value: Any) -> bool:
    return type(value).__name__ == "ObjectRef"
