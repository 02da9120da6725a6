"""LruCache: what a worker process keeps across units and tasks (inputs' jobs, open stores)."""

from __future__ import annotations

import threading

from segbatch.lru import LruCache


def test_keeps_the_last_keys_asked_for_making_each_once():
    made: list[str] = []
    cache: LruCache[str, str] = LruCache(2)

    def get(key: str) -> str:
        return cache.get(key, lambda: made.append(key) or key.upper())

    assert [get(k) for k in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert made == ["a", "b", "c", "b"]  # "c" pushed out "b", used longer ago than "a"; "b" then pushed out "c"
    assert list(cache.values) == ["a", "b"]


def test_a_value_made_twice_at_once_is_kept_once_the_first_winning():
    cache: LruCache[str, object] = LruCache(4)
    inside, go = threading.Event(), threading.Event()
    first = object()

    def slow() -> object:
        inside.set()
        go.wait(30)
        return first

    thread = threading.Thread(target=lambda: cache.get("k", slow))
    thread.start()
    inside.wait(30)  # the first thread makes its value outside the lock: another is not held up
    second = cache.get("k", object)
    go.set()
    thread.join(30)
    assert cache.get("k", object) is second and len(cache.values) == 1
