"""Shared set-up of the benchmarks that run a real worker: services, a trained model, a worker process.

The model is ALS trained on the first 80% of the Last.fm HetRec events; the events sent are the
remaining 20%, repeated with fresh event ids and current timestamps until there are enough, so the
worker folds in real histories against a real model.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.train import lastfm_events
from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.batch import EventBatch
from stream.demo import endpoints, stop_process
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RedisKeys, connect, version_registry
from stream.settings import Settings, load_settings, to_env, with_endpoints
from stream.worker.stats import read_stats


@dataclass
class Live:
    settings: Settings
    version: str
    replay: EventBatch  # the held-back 20%, to be re-sent as many times as needed
    redis: Any
    keys: RedisKeys
    workdir: Path


@contextlib.contextmanager
def live_setup(console: Console, **overrides: Any) -> Iterator[Live]:
    with tempfile.TemporaryDirectory(prefix="musicrec-bench-") as tmp:
        tag = uuid.uuid4().hex[:8]
        base = load_settings({"data_dir": tmp, "events_topic": f"bench-{tag}", "dlq_topic": f"bench-{tag}.dlq",
                              "songs_topic": f"bench-{tag}.songs", "app_id": f"bench-{tag}",
                              "redis_namespace": f"bench{tag}", "session_timeout": 6.0, **overrides})
        with endpoints(base, console) as (kafka, redis_url):
            settings = with_endpoints(base, kafka, redis_url)
            cfg = settings.stream
            events, _ = lastfm_events(None)
            events = events.sorted_by_time()
            cut = int(0.8 * len(events))
            log = EventLog(cfg.log_dir)
            log.append(events.take(slice(0, cut)))
            result = retrain_als(log, cfg.artifacts_dir, settings.model)
            redis = connect(redis_url)
            keys = RedisKeys(cfg.redis_namespace)
            version_registry(redis, keys, cfg.artifacts_dir).publish(result.version)
            ensure_topics(cfg)
            yield Live(settings, result.version, events.take(slice(cut, None)), redis, keys, Path(tmp))


def fresh_events(replay: EventBatch, n: int, round_tag: str) -> EventBatch:
    """``n`` events cycling through ``replay`` with new ids and the current time."""
    idx = np.arange(n) % len(replay)
    ids = np.array([f"{round_tag}-{i}" for i in range(n)], dtype=object)
    return EventBatch(replay.user_ids[idx], replay.song_ids[idx], replay.kinds[idx], np.full(n, time.time()),
                      replay.ms_played[idx], ids)


def start_worker(live: Live, log_name: str = "worker.log") -> subprocess.Popen[bytes]:
    with open(live.workdir / log_name, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"],
                                env=dict(os.environ, **to_env(live.settings)), stdout=out, stderr=subprocess.STDOUT)


def wait_stats(live: Live, proc: subprocess.Popen[bytes], pred: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited while waiting for {what}:\n"
                               + (live.workdir / "worker.log").read_text()[-3000:])
        for s in read_stats(live.redis, live.keys):
            if s["worker"].endswith(f"-{proc.pid}") and pred(s):
                return s
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


STAGES = ("parse", "log", "learn", "lists")  # a batch's stages, as the worker counts them (stream.worker.stats)


def stage_ms(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The worker's mean milliseconds per batch between two of its stats: in all (``busy``) and per stage."""
    batches = max(after["batches"] - before["batches"], 1)
    return {name: 1000 * (after[f"{name}_s"] - before[f"{name}_s"]) / batches for name in ("busy", *STAGES)}


def stage_cell(ms: dict[str, float]) -> str:
    """``busy = parse + log + learn + lists`` in ms."""
    return f"{ms['busy']:.1f} = " + " + ".join(f"{ms[name]:.1f}" for name in STAGES)


def produce(live: Live, events: EventBatch) -> float:
    """Send as fast as the producer goes; returns events/s."""
    t0 = time.perf_counter()
    with EventProducer(live.settings.stream) as producer:
        producer.send_events(events)
    return len(events) / (time.perf_counter() - t0)


__all__ = ["STAGES", "Live", "fresh_events", "live_setup", "produce", "stage_cell", "stage_ms", "start_worker",
           "stop_process", "wait_stats"]
