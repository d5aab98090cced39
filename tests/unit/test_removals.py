"""Hidden songs and forgotten users, in process: the data-directory records, the log's tombstones and
purge, the online state's mask and erasure, the index's searches, the catalog message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index_manager.keys import song_keys
from index_manager.song_index import SongIndex
from offline.compaction import compact_own, purge_forgotten
from offline.eventlog import EventLog
from offline.removals import HiddenSongs, JsonLines, Tombstones
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.online import OnlineALS
from stream.errors import ServiceUnavailable
from stream.events import InvalidEvent, Song, encode_song, parse_song
from stream.worker.backfill import Backfill, Ownership
from stream.worker.lists import ActiveUsers
from stream.worker.removals import Removals
from stream.worker.stats import Counters
from tests.synthetic import synthetic_log
from tests.unit.test_backfill import _Lists


def _on_disk(log: EventLog, user: str) -> int:
    return sum(int((pq.read_table(p).column("user_id").to_numpy(zero_copy_only=False) == user).sum())
               for p in log.segments())


def test_json_lines_are_followed_incrementally_and_a_partial_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    reader = JsonLines(path)
    assert reader.read_new() == []
    JsonLines(path).append([{"a": 1}, {"a": 2}])
    assert reader.read_new() == [{"a": 1}, {"a": 2}]
    with path.open("ab") as f:
        f.write(b'{"a": 3}\n{"a"')  # a writer half-way through its line
    assert reader.read_new() == [{"a": 3}]
    with path.open("ab") as f:
        f.write(b': 4}\n')
    assert reader.read_new() == [{"a": 4}]


def test_the_latest_request_per_song_decides_and_an_older_one_read_again_does_not(tmp_path: Path) -> None:
    writer, reader = HiddenSongs(tmp_path), HiddenSongs(tmp_path)
    writer.record(["s1", "s2"], True, at=10.0)
    assert reader.refresh() == (["s1", "s2"], [])
    writer.record(["s1"], False, at=20.0)
    writer.record(["s2"], False, at=5.0)  # older than the hide it would undo
    assert reader.refresh() == ([], ["s1"])
    assert reader.hidden() == ["s2"]
    # the same requests read from the songs topic again (it is re-read from the start) change nothing
    assert reader.merge(["s1"], True, 10.0) == [] and reader.merge(["s2"], True, 10.0) == []
    fresh = HiddenSongs(tmp_path)  # a restarted worker
    assert fresh.refresh() == (["s2"], []) and not fresh.is_hidden("s1")


def test_forgetting_voids_the_users_past_on_read_on_append_and_on_disk(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    history = synthetic_log()
    log.append(history.take(slice(0, 1500)), writer="w1")
    log.append(history.take(slice(1500, None)), writer="w2")
    n_u3 = int((history.user_ids == "u3").sum())
    assert n_u3 > 0 and _on_disk(log, "u3") == n_u3
    at = float(history.ts.max()) + 1
    log.tombstones.record(["u3"], at)

    # read: gone at once, before any purge; every other user's events are all there
    read = log.read()
    assert "u3" not in set(read.user_ids) and len(read) == len(history) - n_u3
    # disk: the segments holding them rewritten, nothing else touched
    purged = purge_forgotten(log)
    assert (purged.events, purged.segments) == (n_u3, 2)
    assert _on_disk(log, "u3") == 0 and log.range().n_events == len(history) - n_u3
    assert purge_forgotten(log).events == 0
    # a replay of the old history cannot bring them back; events after the forget start a new history
    old = history.take(np.flatnonzero(history.user_ids == "u3"))
    assert log.append(old) is None
    new = EventBatch.from_columns(np.array(["u3"], dtype=object), np.array(["s1"], dtype=object),
                                  ts=np.array([at + 5]), event_ids=np.array(["after"], dtype=object))
    log.append(new)
    assert list(log.read().event_ids[log.read().user_ids == "u3"]) == ["after"]
    # another process's tombstones are seen by a reader that was already open
    EventLog(tmp_path / "log").tombstones.record(["u4"], at)
    assert "u4" not in set(log.read().user_ids)


def test_merging_a_writers_segments_leaves_forgotten_events_out(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    history = synthetic_log()
    for start in range(0, 600, 100):
        log.append(history.take(slice(start, start + 100)), writer="w")
    n_u5 = int((history.user_ids[:600] == "u5").sum())
    assert _on_disk(log, "u5") == n_u5 > 0
    log.tombstones.record(["u5"], float(history.ts.max()))
    assert compact_own(log, "w", min_segments=2) == 6
    assert _on_disk(log, "u5") == 0 and len(log.read()) == 600 - n_u5


def test_tombstones_keep_each_users_latest_forget(tmp_path: Path) -> None:
    t = Tombstones(tmp_path)
    t.record(["a"], 10.0)
    t.record(["a", "b"], 20.0)
    void = t.void(np.array(["a", "a", "b", "c"], dtype=object), np.array([15.0, 25.0, 20.0, 0.0]))
    assert list(void) == [True, False, True, False]


def _trained() -> OnlineALS:
    model = OnlineALS(OnlineConfig(factors=8, iterations=10))
    model.fit(synthetic_log())
    return model


def test_a_hidden_song_is_in_no_list_and_lists_stay_full() -> None:
    model = _trained()
    users = np.array([f"u{i}" for i in range(20)] + ["stranger"], dtype=object)
    before = model.serve(users, k=10)
    top = before.recs.song_ids[:, 0].tolist() + before.popular.song_ids[0, :2].tolist()
    hidden = song_keys(np.asarray(sorted(set(top)), dtype=object))
    model.state.hidden.add(hidden)
    model.holder.peek().model.index.hide(hidden)  # type: ignore[union-attr]
    after = model.serve(users, k=10)
    shown = set(after.recs.song_ids.ravel()) | set(after.popular.song_ids.ravel())
    assert not shown & set(top)
    named = {f"because you played {s}" for s in top}
    assert set(before.recs.reasons.ravel()) & named and not set(after.recs.reasons.ravel()) & named
    assert (after.recs.song_ids != "").all() and (after.popular.song_ids != "").all()
    # refilled, not shortened: what was not hidden stays, the rest comes from the pool
    kept = [len((set(b) - set(top)) & set(a)) / len(set(b) - set(top))
            for b, a in zip(before.recs.song_ids, after.recs.song_ids, strict=True)]
    assert np.mean(kept) >= 0.9
    model.state.hidden.remove(hidden)
    model.holder.peek().model.index.unhide(hidden)  # type: ignore[union-attr]
    assert model.serve(users, k=10).recs.song_ids.tolist() == before.recs.song_ids.tolist()


def test_a_hidden_song_is_left_out_of_searches_which_still_return_k() -> None:
    rng = np.random.default_rng(0)
    names = np.array([f"s{i}" for i in range(50)], dtype=object)
    index = SongIndex(names, rng.normal(size=(50, 4)).astype(np.float32), kind="flat")
    q = rng.normal(size=(3, 4)).astype(np.float32)
    keys, _ = index.search(q, 5)
    index.hide(keys[:, 0])
    after, scores = index.search(q, 5)
    assert not np.isin(after, keys[:, 0]).any() and (after >= 0).all() and np.isfinite(scores).all()
    for row in range(3):  # each row: its old order minus the hidden songs, continued
        kept = [x for x in keys[row] if x not in set(keys[:, 0])]
        assert list(after[row][:len(kept)]) == kept
    index.hide(index.keys)  # everything hidden: padded, not an error
    assert (index.search(q, 5)[0] == -1).all()


def test_forgetting_erases_the_users_state_and_a_new_history_starts_from_nothing() -> None:
    model = _trained()
    user = np.array(["u3"], dtype=object)
    assert model.state.history.sizes(user)[0] > 0 and model.state.recent.counts(user)[0] > 0
    assert model.state.forget(user, at=1e10) == 1
    assert model.state.history.sizes(user)[0] == 0 and model.state.recent.counts(user)[0] == 0
    assert model.state.vectors.get("u3") is None and len(model.state) == 59
    stranger = model.recommend(np.array(["nobody"], dtype=object), k=10).song_ids[0]
    assert list(model.recommend(user, k=10).song_ids[0]) == list(stranger), "forgotten = a stranger"
    model.partial_fit(EventBatch.from_columns(user, np.array(["s1"], dtype=object), ts=np.array([2e10])))
    assert model.state.history.sizes(user)[0] == 1


def test_a_visibility_message_is_only_that_and_round_trips() -> None:
    song = parse_song(b'{"song_id": "s9", "hidden": true, "ts": 5}', b"s9")
    assert (song.hidden, song.visibility_only, song.ts) == (True, True, 5.0)
    full = parse_song(b'{"song_id": "s9", "title": "T", "artist": "A", "hidden": false}')
    assert (full.hidden, full.visibility_only) == (False, False)
    assert parse_song(b'{"song_id": "s9", "title": "T"}').hidden is None
    with pytest.raises(InvalidEvent, match="hidden"):
        parse_song(b'{"song_id": "s9", "hidden": "yes"}')
    wire = json.loads(encode_song(Song("s9", "", "", None, {}, 7.0, True, True)))
    assert wire == {"song_id": "s9", "hidden": True, "ts": 7.0}


class _Writer:
    """Stored lists as a dict; the first ``fail`` calls raise as an unreachable Redis does."""

    def __init__(self, stored: dict[str, list[str]], fail: int) -> None:
        self.stored, self.fail, self.deleted = stored, fail, []  # type: ignore[var-annotated]

    def _call(self) -> None:
        if self.fail:
            self.fail -= 1
            raise ServiceUnavailable("redis down")

    def holding(self, users: list[str], songs: list[str]) -> list[str]:
        self._call()
        return [u for u in users if set(self.stored.get(u, [])) & set(songs)]

    def delete(self, users: list[str]) -> int:
        self._call()
        self.deleted += users
        return len(users)


def test_a_worker_applies_removals_at_once_and_redis_gets_its_part_once_it_is_back(tmp_path: Path) -> None:
    model = _trained()
    lists = _Lists()
    backfill = Backfill(lists, Ownership().everyone(), batch=8)  # type: ignore[arg-type]
    writer = _Writer({"u1": ["s2", "s4"], "u2": ["s6"], "u3": ["s4"]}, fail=2)
    log = EventLog(tmp_path / "log")
    removals = Removals(model, log, HiddenSongs(tmp_path / "catalog"), writer, backfill,  # type: ignore[arg-type]
                        ActiveUsers(), Counters())
    removals.load()
    HiddenSongs(tmp_path / "catalog").record(["s4"], True, at=1.0)
    EventLog(tmp_path / "log").tombstones.record(["u3"], at=1e10)  # another process (the CLI) made both requests
    assert log.tombstones.void(np.array(["u3"], dtype=object), np.array([0.0]))[0], "a batch's check reads it first"

    removals.poll_hidden([])
    forgotten = removals.poll_forgotten()
    # in the worker at once, Redis or not
    assert model.state.hidden.mask(song_keys(np.array(["s4", "s2"], dtype=object))).tolist() == [True, False]
    assert [t.user_id for t in forgotten] == ["u3"] and model.state.history.sizes(np.array(["u3"]))[0] == 0
    with pytest.raises(ServiceUnavailable):
        removals.flush()
    with pytest.raises(ServiceUnavailable):
        removals.flush()
    assert writer.deleted == [] and len(backfill) == 0
    removals.flush()  # Redis is back
    assert writer.deleted == ["u3"] and list(backfill._queue) == ["u1"]  # u3 is forgotten, not rewritten
    assert lists.calls == [[]], "the popular list was written at once"
    removals.flush()
    assert writer.deleted == ["u3"] and lists.calls == [[]], "each done once"
    assert removals.poll_forgotten() == [], "a tombstone is applied once"
