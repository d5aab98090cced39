"""Soak: a worker under a steady 2,000 events/s keeps its memory flat and its lag bounded.

60 s by default (CI); ``MUSICREC_SOAK_SECONDS=600`` for the 10-minute run. Figures are printed
(``pytest -s``) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import time

import pytest

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from stream.kafka_io import ensure_topics
from stream.redis_store import RecsClient
from tests.services.processes import publish
from tests.services.streaming import SteadyProducer, log_counts, rss_kib, stale_users, wait_for
from tests.synthetic import synthetic_log

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("MUSICREC_SOAK_SECONDS", "60"))
RATE = 2000.0
USERS = 2000
WARM_UP = 0.3  # of the run: caches, the remembered-event window and the histories fill up first
MAX_GROWTH_MIB = 40.0  # after warm-up; a leak of even 1 KiB per event would be 2 MiB/s here
# produced minus counted, in seconds of stream; it includes up to 2 s of staleness of the published
# counters. Measured: 4-6 s on a quiet 2-core machine; up to 18 s while another job took a core for
# a few minutes of the 10-minute run (then back to 2 s). A worker slower than the stream grows
# without bound: 10% short of 2,000/s is +60 s over the 10-minute run.
MAX_LAG_S = float(os.environ.get("MUSICREC_SOAK_MAX_LAG", "15"))
# Micro-batch window. The other tests use 0.02 s for low latency, which caps a worker at ~1,200
# events/s on a busy 2-core machine (a batch then holds ~80 events); the default is 0.05 s (~2,000/s
# measured on the same machine); 0.1 s gives headroom over 2,000/s and still sub-second freshness.
BATCH_WITHIN = float(os.environ.get("MUSICREC_SOAK_BATCH_WITHIN", "0.1"))


@pytest.mark.timeout(SOAK_S + 240)  # the 10-minute run outlasts the suite's 300 s default
def test_soak_memory_flat_and_lag_bounded(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model__factors=8, batch_within=BATCH_WITHIN)
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    log.append(synthetic_log())
    version = retrain_als(log, cfg.artifacts_dir, settings.model).version
    publish(settings, version)
    ensure_topics(cfg)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")
    assert worker.proc is not None
    pid = worker.proc.pid

    producer = SteadyProducer(cfg, rate=RATE, n_users=USERS, tag="soak").start()
    t0 = time.monotonic()
    samples: list[tuple[float, int, int, int]] = []  # (t, rss KiB, produced, counted)
    while (t := time.monotonic() - t0) < SOAK_S:
        stats = worker.stats()
        counted = stats[0]["events"] if stats else 0
        samples.append((t, rss_kib(pid), producer.sent, counted))
        time.sleep(1.0)
    produced = producer.stop()
    t_end = time.monotonic()
    # the series first: when the drain below times out, they say how the lag and memory got there
    print("\nlag (s), whole run:", " ".join(f"{(p - c) / RATE:.1f}" for _, _, p, c in samples[::10]))
    print("RSS (MiB), whole run:", " ".join(f"{r / 1024:.0f}" for _, r, _, _ in samples[::10]))
    counted_all = worker.wait(lambda s: s["events"] >= produced, 60, "the worker to drain its lag")["events"]
    drain_s = time.monotonic() - t_end

    warm = [s for s in samples if s[0] >= WARM_UP * SOAK_S]
    rss_warm, rss_end = warm[0][1] / 1024, max(s[1] for s in warm[-5:]) / 1024
    rss_peak = max(s[1] for s in warm) / 1024
    lags = [(p - c) / RATE for _, _, p, c in warm]
    rate = produced / (t_end - t0)
    print(f"\nsoak {SOAK_S:.0f}s: produced {produced} ({rate:.0f}/s, {USERS} users), counted {counted_all}; worker RSS "
          f"{samples[0][1] / 1024:.0f} MiB at start, {rss_warm:.0f} MiB after warm-up ({WARM_UP * SOAK_S:.0f}s), "
          f"{rss_end:.0f} MiB at the end (peak {rss_peak:.0f}); lag after warm-up max {max(lags):.1f}s, "
          f"mean {sum(lags) / len(lags):.1f}s; drained {drain_s:.1f}s after the stream stopped")
    print("lag (s) after warm-up:", " ".join(f"{x:.1f}" for x in lags[::5]))
    print("RSS (MiB):", " ".join(f"{s[1] / 1024:.0f}" for s in samples[::5]))
    assert worker.alive()
    assert rate > 0.9 * RATE, "the test's producer kept up"
    assert rss_end - rss_warm < MAX_GROWTH_MIB, f"RSS grew {rss_end - rss_warm:.0f} MiB after warm-up"
    assert max(lags) < MAX_LAG_S, f"lag reached {max(lags):.1f}s of stream"
    assert counted_all == produced
    rows, distinct, missing = log_counts(cfg.log_dir, producer.ids)
    assert missing == 0 and rows == distinct == produced + 3000
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    wait_for(lambda: stale_users(client, producer.last_of_user) == [], 30, "every user's list to be current")
