"""Lists for every known user, not only for those with new events: written in small batches next to
the live stream, by the worker that owns each user's partition.

At start and after every swap to a new version, every user the online state or the served version
knows is queued (the recently active first); a hidden song puts the users whose stored list holds it
at the front. The worker's app writes one batch of ``MUSICREC_BACKFILL_BATCH`` users at a time and
yields to the events agent in between, so the backfill never holds a batch of events up for more
than one backfill batch. A user whose events were written meanwhile leaves the queue: their list is
as fresh as it gets and carries their last event, which a backfilled list (``last_event`` null) does not.

Each user is written by the worker whose events-topic partition holds them (Kafka's default
partitioner: murmur2 of the UTF-8 key): that worker learns the user's events, so its state is the
user's; the other workers' copies of the user (restored from the shared log) may be stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice

import numpy as np

from stream.worker.lists import ListWriter
from stream.worker.partitions import key_partitions


class Ownership:
    """Which users this worker writes lists for: those of its assigned partitions. Until Kafka has
    assigned any, it owns nobody; ``everyone()`` is the single-process case (replays, tests)."""

    def __init__(self) -> None:
        self.partitions = 0
        self.assigned: frozenset[int] = frozenset()
        self._all = False

    def everyone(self) -> Ownership:
        self._all = True
        return self

    @property
    def known(self) -> bool:
        return self._all or bool(self.partitions and self.assigned)

    def assign(self, partitions: int, assigned: Iterable[int]) -> None:
        self.partitions, self.assigned = partitions, frozenset(assigned)

    def owned(self, users: np.ndarray) -> np.ndarray:
        if self._all:
            return np.ones(len(users), bool)
        if not self.known:
            return np.zeros(len(users), bool)
        return np.isin(key_partitions(users, self.partitions), np.fromiter(self.assigned, np.int64))


class Backfill:
    """Users waiting for a list, front first; each written once however often it was queued."""

    def __init__(self, lists: ListWriter, ownership: Ownership, batch: int) -> None:
        if batch <= 0:
            raise ValueError("batch must be positive")
        self.lists = lists
        self.ownership = ownership
        self.batch = batch
        self.written = 0
        self._queue: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, users: Iterable[str], front: bool = False) -> None:
        users = list(users)
        for user in reversed(users) if front else users:
            self._queue[user] = None
            if front:
                self._queue.move_to_end(user, last=False)

    def discard(self, users: Iterable[str]) -> None:
        for user in users:
            self._queue.pop(user, None)

    def step(self) -> int:
        """Write the next batch of owned users' lists (others are dropped: their owner writes them);
        returns how many were written. Nothing happens while ownership is unknown."""
        if not self._queue or not self.ownership.known:
            return 0
        users = np.asarray(list(islice(self._queue, 4 * self.batch)), dtype=object)
        owned = self.ownership.owned(users)
        # up to the batch-th owned user; the others are dropped: their owner writes them
        examined = int(np.searchsorted(np.cumsum(owned), self.batch)) + 1
        mine = users[:examined][owned[:examined]]
        if len(mine):
            self.lists.write(mine, None)  # may raise (Redis down): nothing is dequeued then
        for user in users[:examined].tolist():
            self._queue.pop(user, None)
        self.written += len(mine)
        return len(mine)
