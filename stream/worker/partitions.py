"""Which users a worker holds: those of the events-topic partitions the group assigned it.

Events are keyed by user, so a partition's users are a worker's alone. The worker remembers the
partition each user's events came from, so that when a rebalance takes partitions away it can drop
exactly their users, and it keeps the event clock (the newest event time seen) that inactivity is
measured against.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from kafka.partitioner.default import murmur2


def key_partitions(user_ids: np.ndarray, n_partitions: int) -> np.ndarray:
    """The partition of each user's key under murmur2, the Java client's and kafka-python's default
    partitioner (what this project's producers use): where an event without a recorded partition
    (history imported without Kafka) would have been consumed from."""
    if n_partitions <= 0:
        raise ValueError("n_partitions must be positive")
    return np.fromiter(((murmur2(str(u).encode("utf-8")) & 0x7FFFFFFF) % n_partitions for u in user_ids),
                       dtype=np.int32, count=len(user_ids))


class Holdings:
    """The partitions a worker holds, the partition each of its users came from, and its event clock."""

    def __init__(self, n_partitions: int = 1) -> None:
        self.n_partitions = n_partitions
        self.partitions: set[int] = set()
        self._partition_of: dict[str, int] = {}
        self.clock = float("-inf")  # newest event time seen: inactivity is measured in event time

    def __len__(self) -> int:
        return len(self._partition_of)

    def key_partitions(self, user_ids: np.ndarray) -> np.ndarray:
        return key_partitions(user_ids, self.n_partitions)

    def observe(self, users: np.ndarray, partitions: np.ndarray, ts: np.ndarray) -> None:
        """Users seen on partitions (a batch, or a restored log), at event times ``ts``."""
        if len(users):
            self._partition_of.update(zip(users.tolist(), np.asarray(partitions).tolist(), strict=True))
            self.clock = max(self.clock, float(np.max(ts)))

    def release(self, partitions: Iterable[int]) -> np.ndarray:
        """Stop holding ``partitions``; returns their users, forgotten here."""
        lost = set(partitions)
        self.partitions -= lost
        users = [u for u, p in self._partition_of.items() if p in lost]
        for user in users:
            del self._partition_of[user]
        return np.asarray(users, dtype=object)

    def forget(self, users: np.ndarray) -> None:
        for user in users:
            self._partition_of.pop(user, None)
