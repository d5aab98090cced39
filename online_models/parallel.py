"""Splitting a request's users over threads.

A user's list depends only on their own state, never on who shares the call, so the users of one
request can be served in parts at once. Much of a part's time is spent in numpy, BLAS, scipy and
FAISS, which release the GIL: in-process, two threads served Last.fm batches of 1,000-2,000 events
1.1-1.25x faster on two cores. In the worker, whose main thread also runs Faust, parsing and the
learning, they mostly shorten each batch (benchmarks/README.md, "Two threads per batch").
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

import numpy as np

R = TypeVar("R")

# users per part at least: measured, two parts of ~20 users served no faster than one call, and
# a quiet stream's small batches then stay in the calling thread
MIN_PART = 32


class Parts:
    """Runs a function over up to ``threads`` parts of a user array, the calling thread taking the
    first part; results come back in the parts' order. The pool's threads start on first use."""

    def __init__(self, threads: int = 1, min_part: int = MIN_PART) -> None:
        if threads < 1 or min_part < 1:
            raise ValueError(f"threads and min_part must be >= 1, got {threads!r} and {min_part!r}")
        self.threads = threads
        self.min_part = min_part
        self._pool: ThreadPoolExecutor | None = None

    def split(self, users: np.ndarray) -> list[np.ndarray]:
        """``users`` in contiguous parts, as many as the threads and ``min_part`` allow (at least one)."""
        n = max(1, min(self.threads, len(users) // self.min_part))
        return [users] if n == 1 else np.array_split(users, n)

    def map(self, fn: Callable[[np.ndarray], R], users: np.ndarray) -> list[R]:
        """``[fn(part) for part in self.split(users)]``, the parts after the first in the pool. Returns
        only once every part is done, even when one raised: the caller may change the state the
        parts read as soon as this returns."""
        parts = self.split(users)
        if len(parts) == 1:
            return [fn(users)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="musicrec-serve")
        futures: list[Future[R]] = [self._pool.submit(fn, part) for part in parts[1:]]
        try:
            first = fn(parts[0])
        finally:
            wait(futures)
        return [first, *(f.result() for f in futures)]
