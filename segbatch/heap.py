"""A worker process's C heap: freed buffers kept for the next ones, not handed back to the kernel and faulted in again.

An actor allocates and frees the same large buffers for every frame or tile:
decoded RGB frames, batches, chunk arrays, encoded chunks. glibc's malloc
serves a buffer above its mmap threshold (128 KiB, raised as such buffers
are freed) with a fresh mapping, and gives memory at the top of a heap back
to the kernel once more than its trim threshold is free there. Either way the
next buffer's pages are faulted in again, each zero-filled by the kernel:
4.3 us a page on the development machine (a VM). Decoding 360x480 frames to
new RGB arrays, and nothing else, faults 222 pages a frame (0.8-1.0 ms of
CPU) with glibc's own thresholds and 2 with these; an actor of the
`--h100` benchmark 280 -> 183 a frame, about 0.4 ms of its 5-6. Past these
thresholds the memory stays in the heap and is reused: a process keeps what
it has freed, up to TRIM_THRESHOLD per heap (the whole run's peak RSS grew
by 170-290 MiB with two actors). Python's own small-object arenas and
glibc's secondary heaps, which it unmaps once empty, still fault.

The thresholds do not cover threads. Each new thread of a worker (a
unit's reader and writer, FFmpeg's decoding threads) takes an arena of its
own while there are fewer than 8 per core, and a new arena's heap is
faulted in page by page as its thread's buffers grow: an actor warms up over
dozens of units, and at 1080p never quite does. The number of arenas is
read once, as a process starts: a local Ray runtime's workers get
MALLOC_ARENAS from the driver's environment (`worker_arenas`). The `--h100`
benchmark's 1080p actor: 2,700 -> 1,040-1,080 page faults a frame, its
kernel time 17-21 -> 9-11 ms and its host work 62 -> 48-50 ms a frame; at
360x480, 36 -> 10 faults a frame over 2,000 frames, its CPU within noise.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes (HEAP_MAX_SIZE / 2): buffers up to 32 MiB come from the heap
TRIM_THRESHOLD = 64 << 20  # free memory a heap keeps at its top: a few units' buffers (a 1080p chunk's arrays are 14 MB)
ARENA_VARIABLE = "MALLOC_ARENA_MAX"  # glibc's tunable: malloc arenas a process's threads share
MALLOC_ARENAS = "2"  # 1 (one lock for every thread) did worse at 1080p: 58 ms of host work a frame against 48-50


@functools.cache
def _glibc() -> bool:
    """Whether this process's C library is glibc, whose malloc these settings are for (`platform.libc_ver` reads the
    interpreter's binary: once)."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def keep_freed_buffers() -> bool:
    """Set this process's malloc to reuse freed buffers (once; later calls say what the first did). False where the C
    library is not glibc (macOS, musl): their allocators are left as they are."""
    if not _glibc():
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        # the mmap threshold first: setting either fixes both, where glibc would otherwise raise them as buffers are freed
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False


@contextmanager
def worker_arenas() -> Iterator[None]:
    """For the block (ray.init of a local runtime): MALLOC_ARENAS in this process's environment, which the runtime's
    workers inherit; left alone where it is set already (the user's) or the C library is not glibc. A cluster's nodes
    take their own environment: start them with MALLOC_ARENA_MAX=2 for the same."""
    if ARENA_VARIABLE in os.environ or not _glibc():
        yield
        return
    os.environ[ARENA_VARIABLE] = MALLOC_ARENAS
    try:
        yield
    finally:
        os.environ.pop(ARENA_VARIABLE, None)
