"""Per-partition state, in process against the real redis-server: a worker restores exactly its
partitions' users (each as a whole-log restore would), drops them when a partition goes, and evicts
users inactive for MUSICREC_STATE_TTL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from offline.eventlog import EventLog
from stream.events import encode_event
from stream.redis_store import connect_to
from stream.settings import Settings
from stream.worker.messages import Message
from stream.worker.partitions import key_partitions
from stream.worker.parts import WorkerParts
from stream.worker.start import drop_partitions, evict_inactive, restore
from tests.services.test_faults import history_of
from tests.synthetic import synthetic_log

DAY = 86400.0


def live_messages(settings: Settings, n: int, t0: float) -> list[Message]:
    """Events as Kafka would deliver them: each on its user's key partition."""
    users = np.array([f"u{i % 70}" for i in range(n)], dtype=object)  # u60..u69 are new to the history
    parts = key_partitions(users, settings.stream.partitions)
    return [Message(u.encode(), encode_event(u, f"s{(i * 7) % 50}", "play", ts=t0 + i, event_id=f"live{i}"),
                    settings.stream.events_topic, int(p), i, t0 + i)
            for i, (u, p) in enumerate(zip(users, parts, strict=True))]


def test_each_worker_restores_exactly_its_partitions_users(make_settings: Callable[..., Settings],
                                                            tmp_path: Path) -> None:
    settings = make_settings(partitions=4)
    redis = connect_to(settings.stream)
    history = synthetic_log(n_users=60, n_events=1500)
    EventLog(settings.stream.log_dir).append(history)  # imported: partitions by key
    writer = WorkerParts.build(settings, redis, worker_id="writer")
    msgs = live_messages(settings, 600, float(history.ts.max()) + 60)
    for start in range(0, len(msgs), 100):
        writer.processor.process(msgs[start:start + 100])

    whole = WorkerParts.build(settings, redis, worker_id="whole")
    assert restore(whole) == len(history) + len(msgs)
    low = WorkerParts.build(settings, redis, worker_id="low")
    high = WorkerParts.build(settings, redis, worker_id="high")
    n_low, n_high = restore(low, {0, 1}), restore(high, {2, 3})
    assert n_low + n_high == len(history) + len(msgs) and min(n_low, n_high) > 0
    all_users = set(whole.model.state.history.users().tolist())
    users_low = set(low.model.state.history.users().tolist())
    users_high = set(high.model.state.history.users().tolist())
    assert users_low.isdisjoint(users_high) and users_low | users_high == all_users and len(all_users) == 70
    parts_of = dict(zip(sorted(all_users), key_partitions(np.array(sorted(all_users), dtype=object), 4).tolist(),
                        strict=True))
    assert all(parts_of[u] in (0, 1) for u in users_low)
    full = history_of(whole)
    for worker in (low, high):  # each user's state is what a whole-log restore gives
        for user, (keys, pos, neg) in history_of(worker).items():
            np.testing.assert_array_equal(keys, full[user][0], err_msg=user)
            np.testing.assert_allclose(pos, full[user][1], rtol=1e-9, err_msg=user)
            np.testing.assert_allclose(neg, full[user][2], rtol=1e-9, err_msg=user)
    assert low.holdings.partitions == {0, 1} and len(low.holdings) == len(users_low)

    dropped = drop_partitions(low, {1})
    kept = set(low.model.state.history.users().tolist())
    assert dropped == len(users_low) - len(kept) > 0
    assert kept == {u for u in users_low if parts_of[u] == 0} and low.holdings.partitions == {0}


def test_users_inactive_past_the_ttl_are_evicted_and_not_restored(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(partitions=2, state_ttl=30.0)
    redis = connect_to(settings.stream)
    worker = WorkerParts.build(settings, redis, worker_id="w")
    t0 = 1.79e9
    old = [Message(b"old", encode_event("old", "s1", "play", ts=t0, event_id="o1"), "events", 0, 0, t0)]
    worker.processor.process(old)
    recent = [Message(f"r{i}".encode(), encode_event(f"r{i}", "s2", "play", ts=t0 + 31 * DAY + i, event_id=f"r{i}"),
                      "events", 1, i, t0) for i in range(3)]
    worker.processor.process(recent)
    assert len(worker.model.state) == 4
    assert evict_inactive(worker) == 1 and "old" not in worker.model.state.history
    assert len(worker.model.state) == 3 and worker.counters.evicted == 1
    successor = WorkerParts.build(settings, redis, worker_id="next")
    restore(successor)
    assert sorted(successor.model.state.history.users().tolist()) == ["r0", "r1", "r2"]
