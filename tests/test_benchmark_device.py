"""The `--h100` benchmark's shared stand-in device: batches queue on it back to back, as on a GPU."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.pipeline import stand_in


def _device(lock: Path, held_until_woken: bool = False) -> object:
    worker = stand_in(0.0, lock.with_suffix(".spans"), str(lock), held_until_woken=held_until_woken)
    return object.__new__(worker)  # `_device_slot` needs no model, no job


def test_a_batch_given_while_another_runs_starts_when_that_one_ends(tmp_path: Path) -> None:
    lock = tmp_path / "video.device"
    lock.write_bytes(b"")
    one, other = _device(lock), _device(lock)  # two actors' stand-ins, one device

    before = time.time()
    first = one._device_slot(60.0)  # type: ignore[attr-defined]
    second = other._device_slot(30.0)  # type: ignore[attr-defined]
    third = one._device_slot(15.0)  # type: ignore[attr-defined]

    assert before <= first[0] <= time.time() and first[1] == first[0] + 60.0
    assert second == (first[1], first[1] + 30.0)  # queued behind the first, whose thread has not even slept yet
    assert third == (second[1], second[1] + 15.0)


def test_a_device_free_since_a_slot_ended_starts_the_next_batch_now(tmp_path: Path) -> None:
    lock = tmp_path / "video.device"
    lock.write_bytes(b"")
    device = _device(lock)
    first = device._device_slot(0.0)  # type: ignore[attr-defined]
    time.sleep(0.01)

    asked = time.time()
    second = device._device_slot(1.0)  # type: ignore[attr-defined]

    assert second[0] >= asked > first[1]  # not at the old slot's end: the device sat idle in between


def test_as_before_the_device_is_held_until_the_callers_thread_has_slept(tmp_path: Path) -> None:
    lock = tmp_path / "video.device"
    lock.write_bytes(b"")
    device = _device(lock, held_until_woken=True)

    start, end = device._device_slot(0.02)  # type: ignore[attr-defined]

    assert end - start >= 0.02 and time.time() >= end
