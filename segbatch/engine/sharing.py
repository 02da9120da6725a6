"""Actors sharing a GPU (`--actors-per-gpu`): as many per device as its host work needs to keep it busy.

A fast card does a 360x480 frame's network in a few milliseconds; decoding,
encoding and hashing the frame on the host can take longer. One actor per
GPU then leaves the device idle between its batches, and the answer is more
actors feeding the same device, each with its own CPU.

`--actors-per-gpu N` asks Ray for 1/N of a GPU per actor. Under `auto` every
GPU gets an owner actor, which holds the whole GPU in Ray's accounting (so
nothing else is placed there), and the pool adds helpers on the owner's node
that hold a CPU only and use the owner's GPU. It reads each finished unit's
stage seconds (the worker's ledger entry): while a device's model stage was
idle more than IDLE_LIMIT of the time since its last change and units wait,
it adds the helpers that would fill it at the rate measured (`helpers_wanted`),
as many as its node's CPUs allow, up to MAX_PER_GPU actors; once they have
joined it measures again.

Each actor's sub-batch memory budget is its share of the card: 1/N of the
usual fraction, and 1/MAX_PER_GPU of it under `auto`, fixed from the start
so the bits never depend on how many actors the pool decided on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

MAX_PER_GPU = 8  # actors one GPU may be shared by under `auto`
IDLE_LIMIT = 0.10  # a device whose model stage idles more than this fraction of the time gets another actor
UNITS_PER_LOOK = 2  # units finished per actor on a device since its last change before it is judged


@dataclass
class Device:
    """One GPU (a node and the GPU ids its owner actor was given) and the actors feeding it."""

    node: str
    gpus: str  # the owner's CUDA_VISIBLE_DEVICES as Ray set it: helpers use the same
    owner: int  # the pool slot of the actor Ray gave the GPU to
    node_cpus: float = 0.0  # the CPUs of its node: helpers go there or nowhere
    actors: set[int] = field(default_factory=set)  # ready slots using the device, the owner included
    most: int = 0  # the most actors that used it at once
    since: float = field(default_factory=time.monotonic)  # the last change (an actor joined): busy time is counted from here
    model_seconds: float = 0.0  # model-stage seconds of the units finished on it since then
    units: int = 0
    starting: int = 0  # helpers asked for that are not ready yet

    def joined(self, slot: int) -> None:
        if slot != self.owner and slot not in self.actors:
            self.starting = max(0, self.starting - 1)
        self.actors.add(slot)
        self.most = max(self.most, len(self.actors))
        self.since, self.model_seconds, self.units = time.monotonic(), 0.0, 0

    def finished(self, stages: dict[str, float]) -> None:
        self.model_seconds += float(stages.get("model", 0.0))
        self.units += 1

    def busy(self, now: float) -> float | None:
        """The fraction of the time since the last change the model stage ran; None until enough units say so."""
        if self.units < UNITS_PER_LOOK * len(self.actors) or now <= self.since:
            return None
        return min(1.0, self.model_seconds / (now - self.since))


def helpers_wanted(busy: float | None, actors: int, most: int) -> int:
    """How many actors to add to a device whose model stage ran `busy` of the time fed by `actors`: none unless it idled
    more than IDLE_LIMIT; else those that fill it at the measured rate per actor, at most `most` in all."""
    if busy is None or busy >= 1.0 - IDLE_LIMIT or actors >= most:
        return 0
    target = math.ceil((1.0 - IDLE_LIMIT) * actors / max(busy, 1e-3))
    return max(1, min(most, target) - actors)


def memory_share(actors_per_gpu: int | None) -> float:
    """The share of a GPU's sub-batch budget each actor gets: 1/N, or 1/MAX_PER_GPU under `auto` (None)."""
    return 1.0 / (MAX_PER_GPU if actors_per_gpu is None else actors_per_gpu)
