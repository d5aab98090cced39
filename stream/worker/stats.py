"""A worker's counters, published to Redis every few seconds, and the one reader of everyone's.

``<ns>:stats:<worker>`` holds one JSON object per worker process (it expires when the worker stops
publishing); ``musicrec status``, the read API, the demo, the benchmarks and the tests read them
through :func:`read_stats`.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from stream.redis_store import RedisKeys, mget, translate_errors
from stream.settings import StreamConfig

STATS_TTL_S = 300


@dataclass
class Counters:
    events: int = 0
    refused: int = 0  # counted once delivered to the dead-letter topic
    duplicates: int = 0  # valid events already folded in (Kafka redelivery): logged and learnt once
    evicted: int = 0  # users dropped after MUSICREC_STATE_TTL without an event
    batches: int = 0
    users_written: int = 0
    last_batch_ms: float = 0.0
    songs: int = 0
    songs_indexed: int = 0
    catalog_lag_ms: float = 0.0
    started_at: float = field(default_factory=time.time)
    first_batch_at: float = 0.0  # wall clock of the first and latest batch with events (throughput)
    last_batch_at: float = 0.0
    events_at_first_batch: int = 0
    cpu_at_first_batch: float = 0.0  # process CPU seconds, all threads (events per CPU-second)
    cpu_at_last_batch: float = 0.0
    lists_backfilled: int = 0  # lists written for users without new events (start, swaps, hidden songs)
    backfill_pending: int = 0
    songs_hidden: int = 0
    users_forgotten: int = 0
    events_void: int = 0  # events of forgotten users' erased histories, dropped on arrival
    # records fetched but not processed here: fetched while a rebalance suspended the flow, or of an
    # older consumer generation; their offsets were not committed, so Kafka delivers them again
    records_refetched: int = 0
    # seconds spent in batches, in all and per stage: parsing; the log append with its checks (void,
    # dedup, holdings); learning; the lists with their Redis write and the bookkeeping after it
    busy_s: float = 0.0
    parse_s: float = 0.0
    log_s: float = 0.0
    learn_s: float = 0.0
    lists_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LatencyWindow:
    """The most recent ``size`` latencies (seconds) in a ring buffer; percentiles on demand."""

    def __init__(self, size: int = 20_000) -> None:
        self._values = np.zeros(size)
        self._next = 0
        self._count = 0

    def add(self, seconds: np.ndarray) -> None:
        seconds = np.asarray(seconds, dtype=np.float64)[-len(self._values):]
        idx = (self._next + np.arange(len(seconds))) % len(self._values)
        self._values[idx] = seconds
        self._next = (self._next + len(seconds)) % len(self._values)
        self._count = min(len(self._values), self._count + len(seconds))

    def percentiles_ms(self, ps: tuple[float, ...] = (50, 95, 99)) -> tuple[float, ...]:
        if self._count == 0:
            return tuple(0.0 for _ in ps)
        return tuple(float(v) * 1000 for v in np.percentile(self._values[:self._count], ps))


def worker_name(cfg: StreamConfig) -> str:
    """The worker's stable name (``MUSICREC_WORKER_ID``, else the host name): the same across restarts,
    so metrics keep one series per worker; the process id is added to it for the stats key only."""
    return cfg.worker_id or socket.gethostname()


def publish_stats(client: redis.Redis, keys: RedisKeys, worker_id: str, stats: dict[str, Any]) -> None:
    data = dict(stats, worker=worker_id, updated_at=time.time())
    with translate_errors("publishing worker stats"):
        client.set(keys.stats(worker_id), json.dumps(data), ex=STATS_TTL_S)


def parse_stats(raw: bytes | str) -> dict[str, Any] | None:
    """One worker's stats, or None for a value that is not (a foreign or half-written key)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("worker"), str):
        return None
    return data


def read_stats(client: redis.Redis, keys: RedisKeys) -> list[dict[str, Any]]:
    """Every live worker's stats, ordered by worker id."""
    with translate_errors("reading worker stats"):
        names = sorted(client.scan_iter(keys.stats_pattern(), count=100))
        raws = mget(client, names)
    return [s for raw in raws if raw is not None and (s := parse_stats(raw)) is not None]


def status_json(version: str | None, workers: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """``musicrec status --json``: the published version and, per live worker, what it holds."""
    return {"version": version, "workers": [
        {"id": w["worker"], "partitions": list(w.get("partitions", [])), "users": int(w.get("users", 0)),
         "events": int(w.get("events", 0)), "refused": int(w.get("refused", 0)),
         "records_refetched": int(w.get("records_refetched", 0)),
         "rss_mb": float(w.get("rss_mb", 0.0)), "age_s": round(max(now - float(w["updated_at"]), 0.0), 1)}
        for w in workers]}
