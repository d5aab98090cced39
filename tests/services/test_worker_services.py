"""End to end on the real embedded broker (Tansu) and redis-server: worker subprocess, CLI, Redis values."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.batch import PLAY, EventBatch
from stream.kafka_io import EventProducer, ensure_topics, read_topic
from stream.redis_store import RecsClient, connect
from stream.worker.messages import REASON_HEADER, SOURCE_HEADER
from tests.conftest import REPO
from tests.services.processes import publish, run_cli
from tests.services.streaming import publish_content_model
from tests.synthetic import synthetic_log


def seeded(make_settings, **overrides):  # type: ignore[no-untyped-def]
    """Settings whose log holds the synthetic history and whose published model is trained on it."""
    settings = make_settings(model__factors=8, **overrides)
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    history = synthetic_log()
    log.append(history)
    result = retrain_als(log, cfg.artifacts_dir, settings.model)
    publish(settings, result.version)
    ensure_topics(cfg)
    return settings, history, result.version


def wait_value(client: RecsClient, user: str, pred, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.get(user, 20)
        if value is not None and not value.fallback and pred(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"user {user}'s Redis value never satisfied the condition")


def test_a_produced_play_changes_that_users_recs(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings, _, version = seeded(make_settings)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")
    client = RecsClient(settings.stream.redis_url, settings.stream.redis_namespace)
    # the worker refreshed restored users on start: u0 (even cluster) has a list from this version
    before = wait_value(client, "u0", lambda v: v.model_version == version)
    assert all(int(s[1:]) % 2 == 0 for s in before.song_ids[:5])
    # u0 now plays many odd songs; its list must move and never contain what it played
    odd = [f"s{i}" for i in range(1, 60, 2)]
    now = time.time()
    batch = EventBatch.from_columns(np.array(["u0"] * len(odd), dtype=object), np.array(odd, dtype=object),
                                    ts=np.full(len(odd), now), event_ids=np.array([f"odd-{i}" for i in range(len(odd))],
                                                                                  dtype=object))
    with EventProducer(settings.stream) as producer:
        producer.send_events(batch)
    after = wait_value(client, "u0", lambda v: v.last_event and v.last_event["event_id"] == "odd-29")
    assert after.song_ids != before.song_ids
    assert not set(after.song_ids) & set(odd)
    assert after.model_version == version
    assert after.last_event["ts"] == pytest.approx(now)
    assert 0 <= after.updated_at - after.last_event["produced_at"] < 30
    assert worker.wait(lambda s: s["events"] >= len(odd), 10)["refused"] == 0


def test_bad_messages_go_to_the_dlq_and_the_worker_lives(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings, _, version = seeded(make_settings)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")
    bad = [(b"u1", b"{not json"), (b"u1", b'{"user_id":"u1","song_id":"s1","event":"play","ts":-5}'),
           (b"u2", b'{"user_id":"u1","song_id":"s1","event":"play","ts":1700000000}'),
           (None, b"\xff\xfe\xfd")]
    good = EventBatch.from_columns(np.array(["u7"], dtype=object), np.array(["s3"], dtype=object),
                                   ts=np.array([time.time()]), event_ids=np.array(["good-1"], dtype=object))
    with EventProducer(settings.stream) as producer:
        producer.send_raw([v for _, v in bad], [k for k, _ in bad])
        producer.send_events(good)
    stats = worker.wait(lambda s: s["refused"] >= 4 and s["events"] >= 1, 30, "bad and good events")
    assert stats["refused"] == 4 and stats["events"] == 1
    assert worker.alive()
    dead = read_topic(settings.stream, settings.stream.dlq_topic, timeout=10)
    assert sorted(d.value for d in dead) == sorted(v for _, v in bad), "original bytes are kept"
    reasons = {d.value: d.headers[REASON_HEADER].decode() for d in dead}
    assert "not JSON" in reasons[b"{not json"]
    assert "negative" in reasons[bad[1][1]]
    assert "key must equal user_id" in reasons[bad[2][1]]
    assert "UTF-8" in reasons[b"\xff\xfe\xfd"]
    assert all(d.headers[SOURCE_HEADER].startswith(settings.stream.events_topic.encode()) for d in dead)
    logged = EventLog(settings.stream.log_dir).read()
    assert "good-1" in set(logged.event_ids)


def test_retrain_then_recs_through_the_cli(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8)
    ensure_topics(settings.stream)
    worker = start_worker(settings)
    worker.wait_ready()
    history = synthetic_log(n_events=1500)
    history = EventBatch.from_columns(history.user_ids, history.song_ids, history.event_names(),
                                      np.full(len(history), time.time() - 60), None, history.event_ids)
    with EventProducer(settings.stream) as producer:
        producer.send_events(history)
    worker.wait(lambda s: s["events"] >= 1500, 60, "the history to be consumed")
    # no model yet: unknown and known users get popularity
    out = run_cli(settings, "recs", "u1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_version"] == "popularity"

    out = run_cli(settings, "retrain", "--model", "als")
    assert out.returncode == 0, out.stderr
    version = out.stdout.split("published ")[-1].strip()
    worker.wait(lambda s: s["version"] == version, 30, "the swap")
    client = RecsClient(settings.stream.redis_url, settings.stream.redis_namespace)
    value = wait_value(client, "u1", lambda v: v.model_version == version)
    assert len(value.items) == settings.stream.k
    out = run_cli(settings, "recs", "u1", "-k", "5", "--json")
    shown = json.loads(out.stdout)
    assert shown["model_version"] == version and len(shown["items"]) == 5 and not shown["fallback"]
    out = run_cli(settings, "recs", "someone-new", "--json")
    assert json.loads(out.stdout)["fallback"] is True
    out = run_cli(settings, "status")
    assert version in out.stdout and out.returncode == 0


def test_cli_errors_are_clear_not_tracebacks(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,song_id,ts\nu1,s1,notatime\n")
    out = run_cli(settings, "replay", str(bad))
    assert out.returncode == 2 and "bad.csv:2: ts is not a number" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli(settings, "import", "events", str(tmp_path / "missing.csv"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_up_prints_endpoints_and_stops_on_ctrl_c() -> None:
    # a user's shell delivers Ctrl-C with SIGINT at its default; tests that ran before in this pytest
    # process may leave it ignored, and an ignored signal is inherited by the child
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "up"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in lines if "export" in line)
    assert exports["KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
    assert exports["REDIS_URL"].startswith("redis://127.0.0.1:")
    assert connect(exports["REDIS_URL"]).ping()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)  # drains both pipes while waiting: a full pipe must not block the exit
    assert proc.returncode == 0


def test_new_song_from_the_catalog_is_recommended_before_anyone_plays_it(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    from stream.events import Song

    settings = make_settings(model__factors=8)
    cfg = settings.stream
    version = publish_content_model(settings)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")
    with EventProducer(cfg) as producer:
        producer.send_songs([Song("fresh-odd", "New", "Someone", "odd", {"x": 0.1, "y": -0.2}, time.time()),
                             Song("bad-features", "Bad", "Someone", "odd", {"x": 0.3}, time.time())])
    stats = worker.wait(lambda s: s["songs"] >= 1 and s["refused"] >= 1 and s["songs_indexed"] >= 1, 30,
                        "the catalog events")
    assert stats["songs_indexed"] == 1 and stats["refused"] == 1
    dead = read_topic(cfg, cfg.dlq_topic, timeout=10)
    assert [d.key for d in dead] == [b"bad-features"]
    assert "features do not match" in dead[0].headers[REASON_HEADER].decode()
    # users refresh their lists with one play each; the unplayed new song reaches the odd cluster only
    odd_users, even_users = [f"u{i}" for i in range(1, 20, 2)], [f"u{i}" for i in range(0, 20, 2)]
    users = odd_users + even_users
    plays = EventBatch.from_columns(np.array(users, dtype=object),
                                    np.array(["s1" if int(u[1:]) % 2 else "s0" for u in users], dtype=object),
                                    ts=np.full(len(users), time.time()),
                                    event_ids=np.array([f"refresh-{u}" for u in users], dtype=object))
    with EventProducer(cfg) as producer:
        producer.send_events(plays)
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    lists = {u: wait_value(client, u, lambda v, u=u: bool(v.last_event) and v.last_event["event_id"] == f"refresh-{u}")
             for u in users}
    odd_hits = sum("fresh-odd" in lists[u].song_ids for u in odd_users)
    even_hits = sum("fresh-odd" in lists[u].song_ids for u in even_users)
    assert odd_hits >= 5 and even_hits <= 1, (odd_hits, even_hits)


def test_a_worker_behind_a_backlog_takes_few_large_batches_and_loses_nothing(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    # Faust hands over a backlog one fetch at a time (one record batch per partition from the
    # embedded broker, ~100 events); a fixed 20-ms window makes each of those a batch (63 batches
    # here with take_events, 8-11 with take_batches)
    settings, _, _ = seeded(make_settings, stream__batch_size=1000)
    backlog = synthetic_log(n_events=8000, seed=3)
    backlog = EventBatch.from_columns(backlog.user_ids, backlog.song_ids,
                                      np.where(backlog.kinds == PLAY, "play", "skip").astype(object),
                                      np.full(len(backlog), time.time()), None,
                                      np.array([f"b{i}" for i in range(len(backlog))], dtype=object))
    with EventProducer(settings.stream) as producer:
        producer.send_events(backlog)
    worker = start_worker(settings)
    stats = worker.wait(lambda s: s["events"] >= len(backlog), 120, "the backlog")
    assert stats["events"] == len(backlog) and stats["refused"] == 0
    assert stats["batches"] <= 24, f"{stats['batches']} batches for a backlog of {len(backlog)} (at most 1000 each)"
    assert set(backlog.event_ids) <= set(EventLog(settings.stream.log_dir).read().event_ids)
