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
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes (HEAP_MAX_SIZE / 2): buffers up to 32 MiB come from the heap
TRIM_THRESHOLD = 64 << 20  # free memory a heap keeps at its top: a few units' buffers (a 1080p chunk's arrays are 14 MB)


@functools.cache
def keep_freed_buffers() -> bool:
    """Set this process's malloc to reuse freed buffers (once; later calls say what the first did). False where the C
    library is not glibc (macOS, musl): their allocators are left as they are."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        # the mmap threshold first: setting either fixes both, where glibc would otherwise raise them as buffers are freed
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
