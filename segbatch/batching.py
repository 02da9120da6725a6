"""Consecutive runs of items (what `itertools.batched` does from Python 3.12 on; the project supports 3.11)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive runs of `size` items, the last maybe shorter: fixed by the sequence alone (a unit's batches fix the bits)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
