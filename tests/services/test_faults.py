"""Crashes, outages and takeovers lose nothing: real embedded broker and redis-server, real workers.

Figures of each run are printed (``pytest -s``) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from stream.errors import ServiceUnavailable
from stream.events import encode_event
from stream.kafka_io import ensure_topics
from stream.redis_store import RecsClient, connect
from stream.services import EmbeddedServices, free_port
from stream.settings import to_env, with_endpoints
from stream.worker.messages import Message
from stream.worker.parts import WorkerParts
from stream.worker.start import restore
from tests.conftest import REPO
from tests.services.processes import publish, run_cli
from tests.services.streaming import SteadyProducer, log_counts, stale_users, wait_all_logged, wait_for
from tests.synthetic import synthetic_log


def with_model(settings):  # type: ignore[no-untyped-def]
    """Seed the log with a synthetic history and publish an ALS version trained on it."""
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    log.append(synthetic_log())
    result = retrain_als(log, cfg.artifacts_dir, settings.model)
    publish(settings, result.version)
    ensure_topics(cfg)
    return result.version


# -- redelivery, in process ---------------------------------------------------------------------
def messages(n: int, start: int = 0, t0: float = 1.79e9) -> list[Message]:
    out = []
    for i in range(start, start + n):
        user = f"u{i % 37}"
        value = encode_event(user, f"s{(i * 7) % 50}", "skip" if i % 9 == 0 else "play", ts=t0 + i,
                             ms_played=None if i % 4 else 12_000 + i, event_id=f"e{i}")
        out.append(Message(user.encode(), value, "events", 0, i, t0 + i))
    return out


def history_of(worker: WorkerParts) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    users = worker.model.state.history.users()
    rows = worker.model.state.history.gather(users)
    out = {}
    for i, user in enumerate(users):
        sel = rows.slots == i
        order = np.argsort(rows.keys[sel])
        out[user] = (rows.keys[sel][order], rows.pos[sel][order], rows.neg[sel][order])
    return out


def assert_same_state(a: WorkerParts, b: WorkerParts) -> None:
    ha, hb = history_of(a), history_of(b)
    assert set(ha) == set(hb)
    for user in ha:
        np.testing.assert_array_equal(ha[user][0], hb[user][0], err_msg=user)
        np.testing.assert_allclose(ha[user][1], hb[user][1], rtol=1e-9, err_msg=f"{user}: plays counted twice?")
        np.testing.assert_allclose(ha[user][2], hb[user][2], rtol=1e-9, err_msg=f"{user}: skips counted twice?")


def process_in_batches(worker: WorkerParts, msgs: list[Message], size: int = 100) -> None:
    for start in range(0, len(msgs), size):
        worker.processor.process(msgs[start:start + size])


def test_redelivered_events_after_a_restart_are_learnt_once(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A worker dies after logging events but before committing their offsets; its successor rebuilds
    the state from the log and then receives those events again from Kafka. They must count once."""
    settings = make_settings()
    reference_settings = make_settings(data_dir=str(tmp_path / "reference"))
    msgs = messages(1000)
    redis = connect(settings.stream.redis_url)

    crashed = WorkerParts.build(settings, redis, worker_id="crashed")
    process_in_batches(crashed, msgs[:600])  # offsets committed up to 400 only: 400..599 come again
    successor = WorkerParts.build(settings, redis, worker_id="successor")
    assert restore(successor) == 600
    process_in_batches(successor, msgs[400:])
    assert successor.counters.duplicates == 200 and successor.counters.events == 600

    reference = WorkerParts.build(reference_settings, redis, worker_id="reference")
    process_in_batches(reference, msgs)
    assert_same_state(successor, reference)
    rows, distinct, missing = log_counts(settings.stream.log_dir, [f"e{i}" for i in range(1000)])
    assert (rows, distinct, missing) == (1000, 1000, 0), "redelivered events are not appended again"
    # and the lists written after the restart reflect each user's last event
    client = RecsClient("", settings.stream.redis_namespace, client=redis)
    assert stale_users(client, {f"u{i % 37}": f"e{i}" for i in range(1000)}) == []


def test_a_batch_retried_after_a_redis_failure_is_learnt_once(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The worker retries a whole batch while Redis is down; the retry must not fold it in again."""
    with EmbeddedServices(kafka=False, workdir=tmp_path / "redis") as own:
        settings = make_settings()
        settings = with_endpoints(settings, settings.stream.kafka_bootstrap, own.redis_url)
        msgs = messages(300)
        worker = WorkerParts.build(settings, connect(own.redis_url, timeout=0.5), worker_id="w")
        worker.processor.process(msgs[:100])
        own.stop_redis()
        for _ in range(2):  # two failed attempts, as the worker's retry loop would make
            with pytest.raises(ServiceUnavailable, match="Redis failed while writing recommendations"):
                worker.processor.process(msgs[100:200])
        own.start_redis()
        worker.processor.process(msgs[100:200])
        worker.processor.process(msgs[200:])
        reference = WorkerParts.build(make_settings(data_dir=str(tmp_path / "reference")), connect(own.redis_url),
                                   worker_id="ref")
        process_in_batches(reference, msgs)
        assert_same_state(worker, reference)
        assert worker.counters.duplicates == 0 and worker.counters.events == 300
        assert log_counts(settings.stream.log_dir, [f"e{i}" for i in range(300)]) == (300, 300, 0)


# -- kill -9 mid-stream -------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8)
    cfg = settings.stream
    version = with_model(settings)
    history = len(EventLog(cfg.log_dir).read())
    first = start_worker(settings)
    first.wait(lambda s: s["version"] == version, 60, "model load")
    producer = SteadyProducer(cfg, rate=2000, n_users=300, tag="k9").start()
    before = first.wait(lambda s: s["events"] >= 3000, 60, "the worker to be mid-stream")
    first.stop(signal.SIGKILL)
    killed_at = producer.sent
    restarted_at = time.monotonic()
    second = start_worker(settings)
    # the stream goes on while the worker restarts (its events pile up in Kafka)
    wait_for(lambda: producer.sent >= killed_at + 6000, 60, "the stream to go on after the kill")
    produced = producer.stop()
    stopped_at = time.monotonic()
    second.wait(lambda s: s["version"] == version, 60, "the restarted worker's model")
    ready_s = time.monotonic() - restarted_at
    wait_all_logged(cfg.log_dir, producer.ids, 120, lambda: f"{second.stats()}\n{second.log_tail()}")
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    wait_for(lambda: stale_users(client, producer.last_of_user) == [], 60,
             "every user's Redis value to carry their last event")
    caught_up = time.monotonic() - restarted_at
    drained_s = time.monotonic() - stopped_at
    rows, distinct, missing = log_counts(cfg.log_dir, producer.ids)
    assert missing == 0
    assert distinct == produced + history, "nothing else got in"
    assert rows == distinct, f"{rows - distinct} events were appended twice"
    stats = second.stats()[0]
    assert stats["duplicates"] > 0, "the restart exercised redelivery (events logged but not committed)"
    assert second.alive()
    print(f"\nkill -9: produced {produced} at 2000/s (killed after {killed_at}, the worker had counted "
          f"{before['events']}); log {distinct} distinct = {produced} + {history} history, {rows - distinct} "
          f"appended twice, lost 0; restarted worker: {stats['events']} events of which {stats['duplicates']} "
          f"redelivered and not learnt again; restart -> serving {ready_s:.1f}s, restart -> caught up "
          f"{caught_up:.1f}s ({drained_s:.1f}s after the stream ended)")


# -- two workers, one dies ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_surviving_worker_takes_over_a_dead_workers_partitions(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(partitions=8)  # session timeout 6 s
    cfg = settings.stream
    ensure_topics(cfg)
    a, b = start_worker(settings), start_worker(settings)
    a.wait_ready()
    b.wait_ready()
    producer = SteadyProducer(cfg, rate=1000, n_users=200, tag="two").start()
    # both consume: the group split the eight partitions between them
    a.wait(lambda s: s["events"] > 0, 60, "worker a to get partitions")
    b.wait(lambda s: s["events"] > 0, 60, "worker b to get partitions")
    a.stop(signal.SIGKILL)
    killed_at, t_kill = producer.sent, time.monotonic()
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    users = [f"u{i}" for i in range(200)]

    def all_updated_since(mark: int) -> bool:
        values = client.get_many(users, 1)
        return all(v is not None and v.last_event and int(v.last_event["event_id"].split("-")[1]) >= mark
                   for v in values)

    # only b is alive: once every user's list carries an event produced after the kill, b serves
    # a's partitions as well as its own
    wait_for(lambda: all_updated_since(killed_at), 60, "b to take over a's partitions (every user updated)")
    takeover_s = time.monotonic() - t_kill
    # a comes back: the group hands it partitions again, and both keep every list fresh
    a2 = start_worker(settings)
    a2.wait(lambda s: s["events"] > 0, 60, "the restarted worker to get partitions back")
    back_at = producer.sent
    b_before = b.wait_ready()["events"]
    wait_for(lambda: all_updated_since(back_at), 60, "every user updated after the rebalance")
    # both share the load again (stats are published every 2 s, so wait for b's next ones)
    b_after = b.wait(lambda s: s["events"] > b_before, 30, "b to keep consuming its partitions after the rebalance")
    # records fetched while a rebalance suspended b's flow are counted, not processed: Kafka redelivers them
    refetched = b_after["records_refetched"]
    assert isinstance(refetched, int) and refetched >= 0
    a2_events = a2.wait_ready()["events"]
    produced = producer.stop()
    wait_for(lambda: stale_users(client, producer.last_of_user) == [], 60,
             "every user's list to carry their last event")
    wait_all_logged(cfg.log_dir, producer.ids, 60, lambda: f"worker b: {b.stats()}\n{b.log_tail()}")
    rows, distinct, _ = log_counts(cfg.log_dir, producer.ids)
    assert distinct == produced
    assert b.alive() and a2.alive()
    print(f"\ntakeover on 8 partitions: produced {produced} at 1000/s, worker a killed after {killed_at}; "
          f"b took over within {takeover_s:.1f}s (session timeout {cfg.session_timeout:.0f}s); a restarted and "
          f"got {a2_events} events after the rebalance; log {distinct} distinct, {rows - distinct} rows appended "
          f"twice (a's uncommitted batch, redelivered to b; readers deduplicate), b refetched {refetched} records "
          f"fetched during the rebalances, lost 0")


def test_every_worker_indexes_every_new_song(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    from stream.events import Song
    from stream.kafka_io import EventProducer, read_topic
    from tests.services.streaming import publish_content_model

    settings = make_settings(partitions=4, model__factors=8)
    version = publish_content_model(settings)
    workers = [start_worker(settings), start_worker(settings)]
    for w in workers:
        w.wait(lambda s: s["version"] == version, 60, "model load")
    songs = [Song(f"fresh-{i}", "New", "Someone", "odd" if i % 2 else "even",
                  {"x": 0.1 * i, "y": -0.2}, time.time()) for i in range(6)]
    with EventProducer(settings.stream) as producer:
        producer.send_songs([*songs, Song("bad-features", "Bad", "Someone", "odd", {"x": 0.3}, time.time())])
    # the catalog is a broadcast: each worker's replica of the index gets all six songs ...
    stats = [w.wait(lambda s: s["songs_indexed"] >= len(songs), 30, "every song in this worker's index")
             for w in workers]
    assert [s["songs_indexed"] for s in stats] == [len(songs)] * 2
    # ... while storing and dead-lettering stay once per group
    wait_for(lambda: sum(w.wait_ready()["songs"] for w in workers) == len(songs), 30, "the catalog stored once")
    dead = read_topic(settings.stream, settings.stream.dlq_topic, timeout=10)
    assert [d.key for d in dead] == [b"bad-features"]


# -- Redis away for a while ---------------------------------------------------------------------
OUTAGE_S = float(os.environ.get("MUSICREC_REDIS_OUTAGE_SECONDS", "10"))


@pytest.mark.slow
def test_redis_outage_pauses_the_worker_and_loses_nothing(make_settings, start_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with EmbeddedServices(kafka=False, workdir=tmp_path / "redis") as own:
        base = make_settings()
        settings = with_endpoints(base, base.stream.kafka_bootstrap, own.redis_url)
        cfg = settings.stream
        ensure_topics(cfg)
        worker = start_worker(settings)
        worker.wait_ready()
        client = RecsClient(cfg.redis_url, cfg.redis_namespace)
        producer = SteadyProducer(cfg, rate=1000, n_users=200, tag="outage").start()
        worker.wait(lambda s: s["events"] >= 2000, 60, "events before the outage")
        port = own.redis_port
        own.stop_redis()
        t_down = time.monotonic()
        sent_at_outage = producer.sent
        # readers get one clear error, not redis-py internals
        with pytest.raises(ServiceUnavailable, match="Redis failed while reading recommendations") as info:
            client.get("u1")
        assert "Traceback" not in str(info.value)
        with pytest.raises(ServiceUnavailable, match="unreachable"):
            RecsClient(cfg.redis_url, cfg.redis_namespace)
        out = run_cli(settings, "recs", "u1")
        assert out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr, out.stderr
        while time.monotonic() - t_down < OUTAGE_S:  # the outage itself: the worker must live through it
            assert worker.alive(), worker.log_tail()
            time.sleep(0.5)
        own.start_redis()
        assert own.redis_port == port and connect(cfg.redis_url).ping(), "back on the same port"
        t_up = time.monotonic()
        sent_during = producer.sent - sent_at_outage
        wait_for(lambda: producer.sent >= sent_at_outage + sent_during + 2000, 30, "events after the outage")
        produced = producer.stop()
        wait_for(lambda: stale_users(client, producer.last_of_user) == [], 60,
                 "every user's list to carry their last event again")
        caught_up_s = time.monotonic() - t_up
        wait_all_logged(cfg.log_dir, producer.ids, 60, lambda: f"{worker.stats()}\n{worker.log_tail()}")
        rows, distinct, missing = log_counts(cfg.log_dir, producer.ids)
        assert missing == 0 and distinct == produced and rows == distinct
        stats = worker.wait(lambda s: s["events"] >= produced, 30, "the counters")
        assert stats["events"] == produced and stats["duplicates"] == 0
        assert worker.alive()
        assert "retrying in" in worker.log_path.read_text(), "the worker said it was waiting for Redis"
        print(f"\nRedis outage: {OUTAGE_S:.0f}s down while {sent_during} events arrived (1000/s); produced "
              f"{produced}, log {distinct}, lost 0, learnt twice 0; Redis back -> every list current in "
              f"{caught_up_s:.1f}s")


# -- no broker at start -------------------------------------------------------------------------
def test_worker_without_a_broker_retries_then_exits_with_a_clear_message(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    secret = "kafka-SECRET-pw-3141"
    env = {**os.environ, **to_env(settings), "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": secret}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "stream.cli", "worker", "--loglevel", "debug"], env=env,
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: creating topics: Kafka unreachable after 4 attempts"), last
    assert "Traceback" not in out.stderr + out.stdout
    assert "Starting KafkaAdminClient with configuration" in out.stderr, "debug logging was on"
    assert secret not in out.stderr + out.stdout, "the SASL password was logged"
    assert took < 45, f"took {took:.0f}s to give up"
    print(f"\nno broker: gave up after {took:.1f}s with: {last}")
