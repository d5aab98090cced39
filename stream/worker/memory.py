"""Keep the worker's resident memory flat under a steady stream.

Every micro-batch allocates arrays whose sizes vary with the batch. glibc raises its mmap threshold
each time such an array is freed, after which large arrays come from the heap, whose freed middle is
rarely returned: resident memory creeps up with no leak at all (measured: ~1 MiB/s at 2,000 events/s).
A fixed threshold keeps large arrays mmapped, returned to the system the moment they are freed.

The threshold is 4 MiB. Every mmapped array starts on fresh pages, a page fault per 4 KiB it
touches, every batch; a catch-up batch's arrays are 1-3 MiB (Last.fm, ~1,900 events and ~270 users
per batch). Replayed in-process, 20,000 events took 467k minor faults and 1.13 s of system time at
256 KiB (the first choice), 349k and 0.84 s at 1 MiB, 137k and 0.49 s at 4 MiB, 37k and 0.14 s with
glibc's own threshold. The price is memory: in the 10-minute soak (median RSS of the minute after
warm-up against the last minute) 256 KiB grew +1.5%, 4 MiB +5.0%, 32 MiB +9.2% and still rising.
Arrays below the threshold come from the heap, which the stats timer trims (``trim_heap``).

Python's cyclic collector is the other cost of a long-lived heap: each full (oldest-generation)
collection walks every tracked object, Faust's and the libraries' included. In a worker under a
stream that took ~110 ms (max 132) every ~9 s: a stall that every event arriving meanwhile waits out.
:func:`refreeze_heap` collects once and moves what survives out of the collector's way
(``gc.freeze``); full collections then took 0.8-7 ms. It first thaws what an earlier call froze, so
a frozen object that became garbage in a cycle is collected at the next call, not leaked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import resource
import sys

log = logging.getLogger("musicrec.worker")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 4 * 1024 * 1024  # bytes: arrays above this are mmapped


@functools.cache  # found once: find_library reads the linker cache, and the stats timer calls every 2 s
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (no-op, False, on a C library without ``mallopt``)."""
    libc = _libc()
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) if libc is not None else False
    except AttributeError:  # musl or another libc: nothing to pin
        log.info("mallopt unavailable; resident memory may creep under load")
        return False


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; False elsewhere). The
    pinned threshold covers large arrays; the many small ones a batch frees leave free pages between
    live ones, which only a trim returns."""
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


def rss_mb() -> float:
    """This process's resident memory now (MiB); the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def refreeze_heap() -> int:
    """Collect every generation, then freeze what survives (see above); returns the objects frozen.
    One full collection's pause, so it runs at start-up and on a timer of minutes, not per batch."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
