"""Per-user online state: aggregation, decay, caps; equal to the SQL aggregation of the log."""

from __future__ import annotations

import numpy as np

from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.history import DAY, HistoryStore, engagement
from online_models.interactions import Interactions


def ev(users: list[str], songs: list[str], ts: list[float], kinds: list[str] | None = None,
       ms: list[float | None] | None = None) -> EventBatch:
    return EventBatch.from_columns(np.array(users, dtype=object), np.array(songs, dtype=object),
                                   None if kinds is None else np.array(kinds, dtype=object), np.array(ts),
                                   None if ms is None else np.array(ms, dtype=object))


def test_engagement_weights() -> None:
    b = ev(["u"] * 4, ["a", "b", "c", "d"], [0, 0, 0, 0], ["play", "play", "play", "skip"],
           [None, 15000, 90000, 1000])
    pos, neg = engagement(b, full_play_ms=30000, skip_weight=2.0)
    np.testing.assert_allclose(pos, [1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(neg, [0, 0, 0, 2.0])


def test_half_life_decay_and_merge_across_batches() -> None:
    store = HistoryStore(half_life_days=1.0, max_history=10)
    store.update(ev(["u", "u"], ["a", "b"], [0.0, 0.0]))
    store.update(ev(["u"], ["a"], [DAY]))  # one half-life later: a = 0.5 + 1, b = 0.5
    rows = store.gather(np.array(["u"], dtype=object))
    got = dict(zip(rows.keys.tolist(), rows.pos.tolist(), strict=True))
    a, b = ev(["x", "x"], ["a", "b"], [0, 0]).song_keys
    assert got[int(a)] == 1.5 and got[int(b)] == 0.5
    # decaying to a later time halves everything once more
    later = store.gather(np.array(["u"], dtype=object), decay_to=np.array([2 * DAY]))
    np.testing.assert_allclose(sorted(later.pos), [0.25, 0.75])


def test_out_of_order_event_is_decayed_not_dropped() -> None:
    store = HistoryStore(half_life_days=1.0)
    store.update(ev(["u"], ["a"], [DAY]))
    store.update(ev(["u"], ["b"], [0.0]))  # late arrival, one day older than the user's latest
    rows = store.gather(np.array(["u"], dtype=object))
    assert sorted(rows.pos.tolist()) == [0.5, 1.0]
    assert store.last_seen(np.array(["u"], dtype=object))[0] == DAY


def test_cap_keeps_the_strongest_songs() -> None:
    store = HistoryStore(half_life_days=0, max_history=2)
    store.update(ev(["u"] * 6, ["a", "a", "a", "b", "b", "c"], [0] * 6))
    rows = store.gather(np.array(["u"], dtype=object))
    assert len(rows) == 2 and sorted(rows.pos.tolist()) == [2.0, 3.0]


def test_in_memory_aggregation_equals_log_sql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from offline.eventlog import EventLog
    from tests.synthetic import synthetic_log

    log_events = synthetic_log(n_events=2000)
    cfg = OnlineConfig(half_life_days=7.0, skip_weight=1.5)
    log = EventLog(tmp_path / "log")
    log.append(log_events.take(slice(0, 1200)))
    log.append(log_events.take(slice(800, None)))  # overlap = redelivered events, deduped by event_id
    sql = log.interactions(cfg)
    mem = Interactions.from_events(log_events, cfg)
    key = lambda it: np.lexsort((it.song_ids.astype(str), it.user_ids.astype(str)))  # noqa: E731
    a, b = key(sql), key(mem)
    assert list(sql.user_ids[a]) == list(mem.user_ids[b])
    assert list(sql.song_ids[a]) == list(mem.song_ids[b])
    np.testing.assert_allclose(sql.pos[a], mem.pos[b], rtol=1e-9)
    np.testing.assert_allclose(sql.neg[a], mem.neg[b], rtol=1e-9)
