"""Lists for every known user: which users a worker owns, and the backfill's batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kafka.cluster import ClusterMetadata
from kafka.partitioner.default import DefaultPartitioner

from stream.worker.backfill import Backfill, Ownership
from stream.worker.partitions import key_partitions


class _Cluster(ClusterMetadata):  # type: ignore[misc]
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def topics(self, exclude_internal_topics: bool = True) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


def test_a_user_belongs_to_the_partition_the_producer_sends_their_events_to() -> None:
    users = np.array([f"user-{i}" for i in range(300)] + ["é", "u/1"], dtype=object)
    for n in (1, 2, 8):
        cluster = _Cluster(n)
        expected = [DefaultPartitioner().partition("t", u.encode(), u.encode(), None, None, cluster) for u in users]
        assert key_partitions(users, n).tolist() == expected
    assert len(set(key_partitions(users, 8).tolist())) == 8


class _Lists:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def write(self, users: np.ndarray, last_events: Any) -> float:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("redis down")
        self.calls.append(users.tolist())
        return 0.0


def test_the_backfill_writes_owned_users_in_batches_front_first_each_once() -> None:
    lists = _Lists()
    ownership = Ownership()
    backfill = Backfill(lists, ownership, batch=3)  # type: ignore[arg-type]
    users = [f"u{i}" for i in range(20)]
    backfill.enqueue(users)
    backfill.enqueue(["u5", "u19"], front=True)  # e.g. their lists hold a song just hidden
    assert backfill.step() == 0 and len(backfill) == 20, "no partitions assigned yet: nothing written"
    mine = key_partitions(np.array(users, dtype=object), 2) == 1
    ownership.assign(2, [1])
    while len(backfill):
        assert backfill.step() <= 3
    written = [u for call in lists.calls for u in call]
    assert sorted(written) == sorted(np.array(users)[mine].tolist())
    assert len(written) == len(set(written)) and all(len(c) <= 3 for c in lists.calls)
    front = [u for u in ("u5", "u19") if u in written]
    assert written[:len(front)] == front


def test_a_failed_write_dequeues_nobody() -> None:
    backfill = Backfill(_Lists(fail=1), Ownership().everyone(), batch=4)  # type: ignore[arg-type]
    backfill.enqueue(["a", "b", "c"])
    with pytest.raises(ConnectionError):
        backfill.step()
    assert len(backfill) == 3
    assert backfill.step() == 3 and len(backfill) == 0 and backfill.written == 3
