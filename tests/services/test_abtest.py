"""A/B split and per-arm hits (pure functions), then a worker serving two versions at once."""

from __future__ import annotations

import json
import time

import numpy as np

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.abtest import in_treatment
from online_models.batch import EventBatch
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RecsClient
from tests.services.processes import publish, run_cli
from tests.synthetic import synthetic_log


def test_a_worker_serves_two_versions_by_arm_and_counts_their_hits(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8)
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    history = synthetic_log()
    log.append(history)
    control = retrain_als(log, cfg.artifacts_dir, settings.model).version
    treatment = retrain_als(log, cfg.artifacts_dir, settings.model).version
    publish(settings, control)
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
