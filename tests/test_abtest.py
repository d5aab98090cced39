"""A/B split and per-arm hits (pure functions), then a worker serving two versions at once."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.abtest import ArmMetrics, combine, in_treatment
from online_models.batch import EventBatch
from stream.kafka_io import EventProducer, ensure_topics
from stream.publish import publish_version
from stream.redis_store import RecsClient, RedisKeys, connect
from tests.conftest import run_cli
from tests.contract import synthetic_log


def test_the_split_is_stable_batch_independent_and_close_to_the_share() -> None:
    users = np.array([f"user-{i}" for i in range(20_000)], dtype=object)
    treated = in_treatment(users, "salt-1", 0.3)
    assert abs(treated.mean() - 0.3) < 0.015
    # a user's arm does not depend on who shares the call, nor on the call
    singles = np.array([in_treatment(users[i:i + 1], "salt-1", 0.3)[0] for i in range(0, 20_000, 97)])
    np.testing.assert_array_equal(singles, treated[::97])
    np.testing.assert_array_equal(in_treatment(users, "salt-1", 0.3), treated)
    # a new test (salt) draws a new split; the shares nest for one salt
    assert (in_treatment(users, "salt-2", 0.3) != treated).mean() > 0.3
    assert not (in_treatment(users, "salt-1", 0.1) & ~treated).any()
    assert not in_treatment(users, "s", 0.0).any() and in_treatment(users, "s", 1.0).all()
    with pytest.raises(ValueError, match="share"):
        in_treatment(users, "s", 1.5)
    with pytest.raises(ValueError, match="one-dimensional"):
        in_treatment(users.reshape(2, -1), "s", 0.5)


def _events(rows: list[tuple[str, str, str]]) -> EventBatch:
    users, songs, kinds = zip(*rows, strict=True)
    return EventBatch.from_columns(np.array(users, dtype=object), np.array(songs, dtype=object),
                                   np.array(kinds, dtype=object), np.arange(len(rows), dtype=np.float64))


def test_hits_count_plays_of_listed_songs_within_the_horizon() -> None:
    m = ArmMetrics(horizon=2)
    m.observe(_events([("a", "s1", "play")]))  # nothing served yet: not counted
    m.record(np.array(["a", "b"], dtype=object), "control", np.array([["s1", "s2"], ["s3", ""]], dtype=object))
    m.record(np.array(["c"], dtype=object), "treatment", np.array([["s9", "s8"]], dtype=object))
    m.observe(_events([("a", "s2", "play"), ("a", "s5", "play"), ("a", "s1", "play"),  # 3rd is past the horizon
                       ("b", "s3", "skip"), ("b", "", "play"),  # a skip is no play; "" pads, never a hit
                       ("c", "s8", "play"), ("x", "s1", "play")]))
    s = m.summary()
    assert s["control"] == {"served": 2, "plays": 3, "hits": 1, "hit_rate": pytest.approx(1 / 3)}
    assert s["treatment"] == {"served": 1, "plays": 1, "hits": 1, "hit_rate": 1.0}
    # a new list restarts the horizon
    m.record(np.array(["a"], dtype=object), "control", np.array([["s7", ""]], dtype=object))
    m.observe(_events([("a", "s7", "play")]))
    assert m.summary()["control"]["hits"] == 2
    both = combine([m.summary(), m.summary(), {}])
    assert both["control"]["plays"] == 8 and both["control"]["hit_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="arm"):
        m.record(np.array(["a"], dtype=object), "other", np.array([["s1"]], dtype=object))


@pytest.mark.services
def test_a_worker_serves_two_versions_by_arm_and_counts_their_hits(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(factors=8)
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    history = synthetic_log()
    log.append(history)
    redis, keys = connect(cfg.redis_url), RedisKeys(cfg.redis_namespace)
    control = retrain_als(log, cfg.artifacts_dir, settings.model).version
    treatment = retrain_als(log, cfg.artifacts_dir, settings.model).version
    publish_version(redis, keys, control)
    ensure_topics(cfg)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == control, 60, "model load")

    bad = run_cli(settings, "ab", "start", "no-such-version")
    assert bad.returncode == 2 and "no manifest" in bad.stderr
    started = run_cli(settings, "ab", "start", treatment, "--share", "0.5", "--horizon", "5")
    assert started.returncode == 0, started.stderr
    assert run_cli(settings, "ab", "start", treatment).returncode == 1  # one test at a time
    worker.wait(lambda s: "ab" in s, 30, "the worker to start the test")

    users = np.array([f"u{i}" for i in range(60)], dtype=object)
    with EventProducer(cfg) as producer:
        for round_ in range(3):  # each round scores the lists the previous one served
            replay = history.take(slice(round_ * 300, round_ * 300 + 300))
            producer.send_events(EventBatch(
                replay.user_ids, replay.song_ids, replay.kinds, np.full(len(replay), time.time()), replay.ms_played,
                np.array([f"ab{round_}-{i}" for i in range(len(replay))], dtype=object)))
            producer.flush()
            worker.wait(lambda s, n=300 * (round_ + 1): s["events"] >= n, 60, "the round to be processed")

    values = RecsClient(cfg.redis_url, cfg.redis_namespace).get_many(list(users), 10)
    test = json.loads(run_cli(settings, "ab", "status", "--json").stdout)
    treated = in_treatment(users, test["salt"], 0.5)
    for user, value, t in zip(users, values, treated, strict=True):
        assert value is not None and not value.fallback
        assert (value.arm, value.model_version) == (("treatment", treatment) if t else ("control", control)), user
    assert test["running"] and test["treatment"] == treatment and test["control"] == [control]
    for arm in ("control", "treatment"):
        assert test["arms"][arm]["served"] > 0 and test["arms"][arm]["plays"] > 0, test
        assert 0 <= test["arms"][arm]["hits"] <= test["arms"][arm]["plays"]
    text = run_cli(settings, "ab", "status").stdout
    assert "treatment" in text and treatment in text

    stopped = run_cli(settings, "ab", "stop", "--promote")
    assert stopped.returncode == 0, stopped.stderr
    worker.wait(lambda s: "ab" not in s and s["version"] == treatment, 30, "the test to end with the promotion")
    assert run_cli(settings, "ab", "stop").returncode == 1
    assert json.loads(run_cli(settings, "ab", "status", "--json").stdout) == {"running": False}
