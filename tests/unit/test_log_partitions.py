"""The event log records each event's partition; a worker reads back only its partitions' users,
within the window its state needs (imported history goes by its user's key partition)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.compaction import compact_own
from offline.eventlog import EventLog
from online_models.batch import EventBatch
from stream.worker.partitions import Holdings, key_partitions

DAY = 86400.0


def events(users: list[str], ts: list[float], tag: str) -> EventBatch:
    n = len(users)
    songs = np.array([f"s{i % 5}" for i in range(n)], dtype=object)
    return EventBatch.from_columns(np.array(users, dtype=object), songs, ts=np.array(ts, dtype=np.float64),
                                   event_ids=np.array([f"{tag}{i}" for i in range(n)], dtype=object))


def by_parity(users: np.ndarray) -> np.ndarray:
    """A stand-in partitioner over 2 partitions: the user number's parity."""
    return np.array([int(str(u)[1:]) % 2 for u in users], dtype=np.int32)


def test_a_worker_reads_only_its_partitions_users(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.append(events(["u0", "u1", "u2", "u3"], [1, 2, 3, 4], "imp"))  # imported: no partition recorded
    # consumed: u0 and u2 came from partition 1 this time (as if keyed otherwise), u5 from 0
    log.append(events(["u0", "u2", "u5"], [5, 6, 7], "k"), writer="w", partitions=np.array([1, 1, 0]))
    got0, parts0 = log.read_partitions([0], by_parity)
    got1, parts1 = log.read_partitions([1], by_parity)
    # a recorded partition wins over the key's; imported rows go by the key
    assert got0.event_ids.tolist() == ["imp0", "imp2", "k2"] and parts0.tolist() == [0, 0, 0]
    assert got1.event_ids.tolist() == ["imp1", "imp3", "k0", "k1"] and parts1.tolist() == [1, 1, 1, 1]
    both, _ = log.read_partitions([0, 1], by_parity)
    assert len(both) == 7 and list(both.ts) == sorted(both.ts)
    assert log.read_partitions([], by_parity)[0].event_ids.tolist() == []
    assert log.recent_event_ids(10, [1], by_parity) == ["imp1", "imp3", "k0", "k1"]
    assert log.recent_event_ids(2, [0], by_parity) == ["imp2", "k2"]


def test_only_the_window_and_active_users_are_read(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    now = 1000 * DAY
    # u0: active, with one event long before its latest; u2: inactive for 30 days
    log.append(events(["u0", "u0", "u0", "u2"], [now - 400 * DAY, now - 5 * DAY, now, now - 30 * DAY], "e"),
               partitions=np.array([0, 0, 0, 0]))
    assert len(log.read_partitions([0], by_parity)[0]) == 4
    windowed, _ = log.read_partitions([0], by_parity, window_s=100 * DAY)
    assert windowed.event_ids.tolist() == ["e3", "e1", "e2"]  # u0's event 400 days before its latest is out
    active, _ = log.read_partitions([0], by_parity, window_s=100 * DAY, ttl_s=10 * DAY)
    assert active.event_ids.tolist() == ["e1", "e2"]  # u2's latest is 30 days behind the log's newest


def test_segments_written_before_partitions_were_recorded_still_read_and_compact(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    old = pa.table({"user_id": ["u0", "u1"], "song_id": ["s0", "s1"], "event": ["play", "play"], "ts": [1.0, 2.0],
                    "ms_played": pa.array([None, None], pa.int64()), "event_id": ["o0", "o1"],
                    "ingested_at": [1.0, 1.0]})
    pq.write_table(old, tmp_path / "seg-00000000000000000001-wold-aaaaaa.parquet")
    got, parts = log.read_partitions([1], by_parity)  # the old log alone: no partition column at all
    assert got.event_ids.tolist() == ["o1"] and parts.tolist() == [1]
    log.append(events(["u1"], [3.0], "n"), writer="old", partitions=np.array([1]))
    assert compact_own(log, "old", min_segments=2) == 2
    got, parts = log.read_partitions([1], by_parity)
    assert got.event_ids.tolist() == ["o1", "n0"] and parts.tolist() == [1, 1]


def test_key_partitions_follow_murmur2_and_holdings_release_their_users() -> None:
    users = np.array([f"user-{i}" for i in range(400)], dtype=object)
    parts = key_partitions(users, 8)
    assert set(parts.tolist()) == set(range(8))
    assert np.array_equal(parts, key_partitions(users, 8))  # deterministic, unlike Python's hash()
    counts = np.bincount(parts, minlength=8)
    assert counts.min() > 25  # ~50 each: keys spread over the partitions
    holdings = Holdings(8)
    holdings.partitions = set(range(8))
    holdings.observe(users, parts, np.arange(400.0))
    assert holdings.clock == 399.0 and len(holdings) == 400
    released = holdings.release({0, 1})
    assert sorted(released.tolist()) == sorted(users[parts <= 1].tolist())
    assert holdings.partitions == set(range(2, 8)) and len(holdings) == 400 - len(released)


def test_key_partitions_match_the_java_clients_murmur2() -> None:
    # Utils.murmur2 values from Apache Kafka's UtilsTest; the partition is toPositive(hash) % n
    java = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
            "a-little-bit-longer-string": -1486304829, "abc": 479470107}
    keys = np.array(list(java), dtype=object)
    for n in (3, 8, 64):
        assert key_partitions(keys, n).tolist() == [(h & 0x7FFFFFFF) % n for h in java.values()]


def test_a_read_racing_a_compaction_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    log = EventLog(tmp_path)
    log.append(events(["u0", "u1"], [1, 2], "e"), partitions=np.array([0, 1]))
    connect, calls = log.connect, []

    def vanished_once() -> duckdb.DuckDBPyConnection:
        calls.append(1)
        if len(calls) == 1:  # as DuckDB says when a listed segment was merged away meanwhile
            raise duckdb.IOException('IO Error: Cannot open file "seg-x.parquet": No such file or directory')
        return connect()

    monkeypatch.setattr(log, "connect", vanished_once)
    assert log.read_partitions([1], by_parity)[0].event_ids.tolist() == ["e1"] and len(calls) == 2
