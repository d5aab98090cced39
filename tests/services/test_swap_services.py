"""Hot swaps on the real embedded broker and Redis: continuous reads see no error, no empty list and
versions only moving forward, across model kinds (ALS -> ALS -> SASRec); a corrupt version is refused
while the old one keeps serving; the retrain CLI refuses a worse model and leaves the pointer alone."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np

from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.retrain import retrain, retrain_als
from online_models.batch import EventBatch
from online_models.sasrec_spec import SASRecConfig
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RecsClient, RedisKeys, connect
from tests.services.processes import publish, published, run_cli
from tests.synthetic import synthetic_log


def _order(version: str) -> tuple[int, str]:
    return (0, "") if version == "popularity" else (1, version)


def test_reads_during_hot_swaps_never_fail_empty_or_go_back(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8)
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    log.append(synthetic_log())
    first = retrain_als(log, cfg.artifacts_dir, settings.model)
    publish(settings, first.version)
    ensure_topics(cfg)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == first.version, 60, "model load")
    users = [f"u{i}" for i in range(60)]
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]
    last: dict[str, tuple[int, str]] = {}

    def reader() -> None:
        while not stop.is_set():
            try:
                for user, value in zip(users, client.get_many(users, 10), strict=True):
                    if value is None or not value.items:
                        problems.append(f"empty list for {user}")
                        continue
                    seen = _order(value.model_version)
                    if seen < last.get(user, (0, "")):
                        problems.append(f"{user} went back from {last[user]} to {value.model_version}")
                    last[user] = seen
                reads[0] += len(users)
            except Exception as exc:  # any reader failure is a test failure
                problems.append(repr(exc))

    def producer() -> None:
        rng = np.random.default_rng(1)
        with EventProducer(cfg) as p:
            i = 0
            while not stop.is_set():
                u = rng.integers(0, 60, 50)
                p.send_events(EventBatch.from_columns(
                    np.array([f"u{x}" for x in u], dtype=object),
                    np.array([f"s{2 * rng.integers(0, 60) + x % 2}" for x in u], dtype=object),
                    ts=np.full(50, time.time()),
                    event_ids=np.array([f"load-{i}-{j}" for j in range(50)], dtype=object)))
                p.flush()
                i += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=reader), threading.Thread(target=producer)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        versions = [first.version]
        quick_sasrec = SASRecConfig(factors=8, max_len=12, heads=2, dropout=0.0, negatives=16, epochs=5, val_users=0)
        for kind in ("als", "sasrec"):
            result = retrain(log, cfg.artifacts_dir, settings.model, TrainConfig(model=kind),
                             sasrec_config=quick_sasrec)
            publish(settings, result.version)
            versions.append(result.version)
            worker.wait(lambda s, v=result.version: s["version"] == v and s["swaps"] >= len(versions) - 1, 60,
                        "the swap")
            time.sleep(1.0)
        # a corrupt version: checksum mismatch -> refused, the previous one keeps serving
        bad = retrain_als(log, cfg.artifacts_dir, settings.model)
        (cfg.artifacts_dir / bad.version / "item_factors.npy").write_bytes(b"\x93NUMPY corrupted")
        publish(settings, bad.version)
        stats = worker.wait(lambda s: s["refused_versions"] >= 1, 30, "the corrupt version to be refused")
        assert stats["version"] == versions[-1]
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems, problems[:5]
    assert reads[0] > 1000
    assert worker.alive()
    # users touched by the load were recomputed on the newest good version
    assert max(last.values()) == (1, versions[-1])


def test_retrain_cli_refuses_a_worse_model_and_keeps_the_pointer(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8)
    cfg = settings.stream
    EventLog(cfg.log_dir).append(synthetic_log(n_songs=400))
    out = run_cli(settings, "retrain")
    assert out.returncode == 0, out.stderr
    redis = connect(cfg.redis_url)
    keys = RedisKeys(cfg.redis_namespace)
    good = published(settings)
    assert good is not None and good in out.stdout
    worse = replace(settings, model=replace(settings.model, regularization=10_000.0))
    out = run_cli(worse, "retrain")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "refused" in out.stdout and "worse than served" in out.stdout
    assert published(settings) == good
    refused = json.loads(redis.lindex(keys.model_history(), 0))
    gate = refused["gate"]
    assert gate["publish"] is False and gate["served"]["hr@10"] > gate["candidate"]["hr@10"]
