"""Lists for every known user, hidden songs and forgotten users, end to end on the embedded broker and
redis-server: a worker subprocess, the CLI, the API, and the next retrain."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from index_manager.artifacts import load_artifact
from offline.eventlog import EventLog
from offline.removals import HiddenSongs
from offline.retrain import retrain_als
from online_models.batch import EventBatch
from stream.api.app import create_app
from stream.events import Song
from stream.kafka_io import EventProducer
from stream.redis_store import RecsClient, RedisKeys, connect
from tests.services.processes import run_cli
from tests.services.streaming import wait_for
from tests.services.test_worker_services import seeded


def _lists(client: RecsClient, users: list[str]) -> dict[str, list[str] | None]:
    return {u: (None if r is None or r.fallback else r.song_ids) for u, r in zip(users, client.get_many(users, 20),
                                                                                 strict=True)}


def _when(value: Any, pred: Callable[[Any], bool]) -> Any:
    return value if pred(value) else None


def _on_disk(log: EventLog, user: str) -> int:
    return sum(int((pq.read_table(p).column("user_id").to_numpy(zero_copy_only=False) == user).sum())
               for p in log.segments())


def test_every_user_gets_a_list_then_a_hidden_song_and_a_forgotten_user_are_gone(make_settings,  # type: ignore[no-untyped-def]
                                                                                  start_worker) -> None:
    settings, history, version = seeded(make_settings, stream__backfill_batch=16)
    cfg = settings.stream
    users = sorted(set(history.user_ids.tolist()))
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    redis = connect(cfg.redis_url)
    keys = RedisKeys(cfg.redis_namespace)

    # 1. every known user has a personalised list soon after start, not only the recently active
    started = time.monotonic()
    worker = start_worker(settings)
    lists = wait_for(lambda: _when(_lists(client, users), lambda v: all(v.values())), 60,
                     "a list for every known user")
    filled_s = time.monotonic() - started
    assert all(len(v) == cfg.k for v in lists.values())
    assert {client.get(u).model_version for u in users} == {version}  # type: ignore[union-attr]
    assert worker.wait(lambda s: s["lists_backfilled"] >= len(users), 10)["backfill_pending"] == 0

    # 2. hidden: the song in most lists leaves every stored list (refilled, not shortened) within seconds
    song = Counter(s for v in lists.values() for s in v).most_common(1)[0][0]
    t0 = time.monotonic()
    assert run_cli(settings, "songs", "hide", song).returncode == 0
    after = wait_for(lambda: _when(_lists(client, users), lambda v: not any(song in x for x in v.values())), 10,
                     f"{song} gone from every list")
    hidden_s = time.monotonic() - t0
    assert all(len(v) == cfg.k for v in after.values())  # type: ignore[arg-type]
    assert song not in client.get("nobody-at-all").song_ids  # type: ignore[union-attr]  # the popular list

    # 3. forgotten: list, log and online state gone within seconds; an old replay does not bring them back
    user, gone = "u3", "u7"  # u3 comes back with new events, u7 does not
    assert _on_disk(EventLog(cfg.log_dir), user) > 0 and gone in load_artifact(cfg.artifacts_dir, version).user_names
    t0 = time.monotonic()
    assert run_cli(settings, "users", "forget", user, gone).returncode == 0
    assert redis.get(keys.recs(user)) is None and _on_disk(EventLog(cfg.log_dir), user) == 0
    worker.wait(lambda s: s["users_forgotten"] == 2, 10, "the worker forgetting them")
    forgot_s = time.monotonic() - t0
    old = history.take(np.flatnonzero(history.user_ids == user))
    with EventProducer(cfg) as producer:
        producer.send_events(old)
    worker.wait(lambda s: s["events_void"] == len(old), 20, "the old events refused")
    assert redis.get(keys.recs(user)) is None and _on_disk(EventLog(cfg.log_dir), user) == 0
    # events after the forget start a new history
    new = EventBatch.from_columns(np.array([user] * 3, dtype=object), np.array(["s1", "s3", "s5"], dtype=object),
                                  ts=np.full(3, time.time()), event_ids=np.array(["n1", "n2", "n3"], dtype=object))
    with EventProducer(cfg) as producer:
        producer.send_events(new)
    fresh = wait_for(lambda: _when(client.get(user), lambda r: r is not None and not r.fallback), 20,
                     "u3's new list")
    assert fresh.last_event["event_id"] == "n3"
    log = EventLog(cfg.log_dir).read()
    assert sorted(log.event_ids[log.user_ids == user]) == ["n1", "n2", "n3"] and gone not in set(log.user_ids)
    assert redis.get(keys.recs(gone)) is None

    # 4. the next version: u7 absent, u3 trained on their new history only
    result = retrain_als(EventLog(cfg.log_dir), cfg.artifacts_dir, settings.model)
    names = load_artifact(cfg.artifacts_dir, result.version).user_names
    assert gone not in names and user in names
    print(f"\nlists for {len(users)} users {filled_s:.1f} s after start; hidden song gone from every list in "
          f"{hidden_s:.2f} s; forgotten users erased in {forgot_s:.2f} s")


def test_the_api_hides_forgets_and_refills_around_excluded_songs(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings, history, _ = seeded(make_settings, stream__api_key="k3y")
    cfg = settings.stream
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    start_worker(settings)
    stored = wait_for(lambda: _when(client.get("u0", 20), lambda r: r is not None and not r.fallback), 60,
                      "u0's list")
    auth = {"Authorization": "Bearer k3y"}
    with TestClient(create_app(settings)) as api:
        # exclude: the first three songs leave, the list is refilled to k from the stored candidates
        first = stored.song_ids[:3]
        got = api.get("/recs/u0", params={"k": 10, "exclude": ",".join(first)}, headers=auth).json()
        assert [i["song_id"] for i in got["items"]] == stored.song_ids[3:13]
        # writes need the key
        assert api.post(f"/songs/{first[0]}/hide").status_code == 401
        assert api.delete("/users/u0").status_code == 401
        assert api.post(f"/songs/{first[0]}/hide", headers=auth).json()["hidden"] is True
        wait_for(lambda: first[0] not in client.get("u0", 20).song_ids or None, 10,  # type: ignore[union-attr]
                 "the hidden song gone from u0's list")
        # the same through the songs topic: applied by the worker, recorded in the data directory
        with EventProducer(cfg) as producer:
            producer.send_songs([Song(first[1], "", "", None, {}, time.time(), hidden=True, visibility_only=True)])
        wait_for(lambda: first[1] not in client.get("u0", 20).song_ids or None, 10,  # type: ignore[union-attr]
                 "the song hidden through the topic gone from u0's list")
        wait_for(lambda: HiddenSongs(cfg.catalog_dir).refresh()[0] == [first[0], first[1]] or None, 10,
                 "the topic's request recorded")
        done = api.delete("/users/u1", headers=auth).json()
        assert done["lists_deleted"] == 1 and done["events_purged"] == int((history.user_ids == "u1").sum())
        assert api.get("/users/u1/events", headers=auth).json()["events"] == []
        assert api.get("/recs/u1", headers=auth).json()["fallback"] is True
