"""What the read API watches in the background: the workers' counters, a sample of freshness, the
consumer lag and the published model version (loaded aside, swapped into a ``ModelHolder``).

One :class:`Monitor` per app. Every method here blocks on Redis, Kafka or the disk, so the API runs
them in threads; each pass ends by replacing one frozen :class:`Snapshot`. Request handlers only
read the latest snapshot reference, so they never see a half-updated view and never wait on a poll.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from index_manager.artifacts import load_artifact, read_manifest
from index_manager.errors import ArtifactError, ConfigError, MusicrecError, ServiceUnavailable
from index_manager.holder import ModelHolder
from index_manager.keys import song_keys
from online_models.serving import ServingModel
from stream.redis_store import Recs, RedisKeys, as_text, connect, translate_errors
from stream.settings import Settings, StreamConfig

log = logging.getLogger("musicrec.api")

STATS_STALE_S = 10.0  # workers publish stats every 2 s (stream.worker); 5 missed publishes = stale
RATE_WINDOW_S = 10.0  # events/s is averaged over this much of the workers' counter history
FRESHNESS_WINDOW_S = 300.0  # p50/p99 cover values written in the last 5 minutes
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
SCAN_PER_TICK = 500  # recommendation keys sampled per pass: bounds the Redis and JSON work per second
SEEN_MAX = 100_000  # keys whose last sampled write is remembered, so one write is counted once
RECENT_MAX = 20_000  # freshness samples kept for the percentiles
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long


class RedisHandle:
    """One redis-py client, connected on first use: the API must start (and answer 503) while Redis
    is down rather than refuse to start. redis-py reconnects by itself after that."""

    def __init__(self, url: str) -> None:
        if not url:
            raise ConfigError("REDIS_URL is not set (or run `musicrec up` and export what it prints)")
        self.url = url
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        try:  # fail now on a malformed URL (ConfigError); an unreachable Redis is only reported
            self.get()
        except ServiceUnavailable as exc:
            log.warning("%s; serving 503 until it is back", exc)

    def get(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url)
                client = self._client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def recs_pattern(keys: RedisKeys) -> str:
    """SCAN pattern of every user's recommendation key, derived from ``RedisKeys.recs`` so the key
    layout stays defined in one place (glob characters in the namespace are escaped)."""
    prefix = keys.recs("")
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"


# -- worker counters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerView:
    worker: str
    version: str | None
    events: int
    refused: int
    users: int
    batches: int
    last_batch_ms: float
    updated_at: float
    age_s: float
    events_per_s: float

    @property
    def stale(self) -> bool:
        return self.age_s > STATS_STALE_S

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "stale": self.stale}


class EventRates:
    """Events/s per worker from the history of its published counters (they only grow within one
    worker process; a restart is a new worker id)."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, worker: str, updated_at: float, events: int) -> None:
        d = self._samples.setdefault(worker, deque())
        if d and updated_at <= d[-1][0]:
            return
        d.append((updated_at, events))
        # keep the newest sample at or before the window's start, so the rate spans the whole window
        while len(d) > 2 and d[1][0] <= updated_at - self.window:
            d.popleft()

    def rate(self, worker: str, now: float) -> float:
        d = self._samples.get(worker)
        if not d or len(d) < 2 or now - d[-1][0] > STATS_STALE_S:
            return 0.0
        (t0, e0), (t1, e1) = d[0], d[-1]
        return max(0.0, (e1 - e0) / (t1 - t0))

    def keep_only(self, workers: set[str]) -> None:
        for gone in set(self._samples) - workers:
            del self._samples[gone]


def parse_stats(raw: bytes | str) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("worker"), str):
        return None
    return data


# -- freshness ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FreshnessView:
    """Cumulative histogram of sampled writes (Prometheus) and percentiles of the recent ones."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # cumulative, one per bucket, then +Inf
    total: float
    count: int
    p50: float | None
    p99: float | None
    recent: int

    def to_json(self) -> dict[str, Any]:
        return {"p50_s": self.p50, "p99_s": self.p99, "samples": self.recent, "window_s": FRESHNESS_WINDOW_S}


class FreshnessSampler:
    """Freshness (``updated_at - last_event.produced_at``) of recommendation values found by a
    cursor SCAN over the recs keys, a bounded slice per pass.

    Nothing in Redis lists recently written users, so this samples rather than counts: each pass
    reads at most ``SCAN_PER_TICK`` keys, and a value counts once per write (its ``updated_at``).
    Values rewritten after a model swap carry no ``last_event`` and are not event freshness, so they
    are skipped; so are writes older than the window (a restarted API does not re-count history).
    Negative values (producer and worker clocks disagree) count as 0.
    """

    def __init__(self, buckets: tuple[float, ...] = FRESHNESS_BUCKETS) -> None:
        self.buckets = buckets
        self.cursor = 0
        self._seen: OrderedDict[bytes | str, float] = OrderedDict()
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_MAX)
        self._counts = [0] * (len(buckets) + 1)
        self._total = 0.0

    def observe(self, seconds: float, written_at: float) -> None:
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._total += seconds
        self._recent.append((written_at, seconds))

    def sample(self, client: redis.Redis, pattern: str, now: float) -> int:
        """One bounded SCAN step; returns how many new writes were observed."""
        with translate_errors("sampling recommendation values"):
            self.cursor, keys = client.scan(self.cursor, match=pattern, count=SCAN_PER_TICK)
            keys = keys[:2 * SCAN_PER_TICK]
            values = client.mget(keys) if keys else []
        new = 0
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            try:
                value = Recs.decode(raw, k=1)  # only the head: items are not needed here
                event = value.last_event
                produced = float(event["produced_at"]) if event else math.nan
                written = float(value.updated_at)
            except (ValueError, KeyError, TypeError):
                continue
            if not math.isfinite(produced) or written < now - FRESHNESS_WINDOW_S:
                continue
            if self._seen.get(key, -math.inf) >= written:
                continue
            self._seen[key] = written
            self._seen.move_to_end(key)
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            self.observe(written - produced, written)
            new += 1
        return new

    def view(self, now: float) -> FreshnessView:
        while self._recent and self._recent[0][0] < now - FRESHNESS_WINDOW_S:
            self._recent.popleft()
        recent = np.array([s for _, s in self._recent], dtype=np.float64)
        p50, p99 = (float(q) for q in np.quantile(recent, [0.5, 0.99])) if len(recent) else (None, None)
        return FreshnessView(self.buckets, tuple(np.cumsum(self._counts).tolist()), self._total,
                             sum(self._counts), p50, p99, len(recent))


# -- consumer lag ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lag:
    available: bool
    partitions: dict[int, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int | None:
        return sum(self.partitions.values()) if self.available else None

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "total": self.total, "error": self.error,
                "partitions": {str(p): n for p, n in sorted(self.partitions.items())}}


class LagProbe:
    """Lag of the workers' consumer group (``app_id``) on the events topic: end offsets minus
    committed offsets, read without joining the group (kafka-python group consumers hang against
    Tansu): an admin client for the committed offsets, a group-less consumer for the end offsets.

    Best effort: any failure is reported as unavailable with the reason, and the clients are
    rebuilt on the next call. Against the embedded Tansu broker the end offsets it reports trail
    the committed ones, so lag reads 0 there; against Apache Kafka the figures are exact.
    """

    def __init__(self, cfg: StreamConfig, timeout_ms: int = 3000) -> None:
        self.cfg = cfg
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._admin: Any = None
        self._consumer: Any = None

    def measure(self) -> Lag:
        if not self.cfg.kafka_bootstrap:
            return Lag(False, error="KAFKA_BOOTSTRAP is not set")
        with self._lock:
            try:
                return self._measure()
            except Exception as exc:  # a monitoring probe must never take the read API down
                self._close()
                return Lag(False, error=f"{type(exc).__name__}: {exc}")

    def _measure(self) -> Lag:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        from stream.kafka_io import client_config

        def bounded(cls: Any) -> dict[str, Any]:
            # an unreachable broker would otherwise hold the probe for kafka-python's 30 s bootstrap
            # wait; the option is named differently in 2.x and 3.x, and unknown options are refused
            wait = "bootstrap_timeout_ms" if "bootstrap_timeout_ms" in cls.DEFAULT_CONFIG \
                else "api_version_auto_timeout_ms"
            return {**client_config(self.cfg), "request_timeout_ms": self.timeout_ms, wait: self.timeout_ms}

        if self._admin is None:
            self._admin = KafkaAdminClient(**bounded(KafkaAdminClient))
        if self._consumer is None:
            # group-less (never joins); the session/heartbeat values only satisfy kafka-python 2's
            # check that they stay below request_timeout_ms, which bounds end_offsets() here
            self._consumer = KafkaConsumer(**bounded(KafkaConsumer), enable_auto_commit=False,
                                           session_timeout_ms=self.timeout_ms - 500,
                                           heartbeat_interval_ms=(self.timeout_ms - 500) // 3)
        topic, group = self.cfg.events_topic, self.cfg.app_id
        parts = self._consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return Lag(False, error=f"topic {topic} does not exist yet")
        if hasattr(self._admin, "list_group_offsets"):  # kafka-python >= 3: {group: {tp: offset}}
            committed = self._admin.list_group_offsets(group).get(group, {})
        else:  # kafka-python 2.x
            committed = self._admin.list_consumer_group_offsets(group)
        end = self._consumer.end_offsets(tps)
        start = self._consumer.beginning_offsets(tps)
        lag = {}
        for tp in tps:
            meta = committed.get(tp)
            # a partition the group never committed is read from its beginning
            done = meta.offset if meta is not None and meta.offset >= 0 else start[tp]
            lag[tp.partition] = max(0, int(end[tp]) - int(done))
        return Lag(True, lag)

    def _close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # closing a broken client must not hide why it broke
                    log.debug("closing a Kafka client failed: %s", exc)
        self._admin = self._consumer = None

    def close(self) -> None:
        with self._lock:
            self._close()


# -- the live index -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedVersion:
    """A loaded model version with what the dashboard shows about it, swapped as one reference."""

    model: ServingModel
    metrics: dict[str, Any]
    created_at: float | None


@dataclass(frozen=True)
class Similar:
    song_id: str
    score: float


class LiveIndex:
    """The published version's song index, for similar-song queries. A new version is loaded and
    checked aside, then swapped by reference; a version that fails to load is refused (the old one
    keeps serving) and retried only after ``RETRY_FAILED_S``."""

    def __init__(self, artifacts_dir: Any) -> None:
        self.artifacts_dir = artifacts_dir
        self.holder: ModelHolder[ServedVersion] = ModelHolder()
        self.swaps = 0
        self.refused = 0
        self.failed: dict[str, tuple[float, str]] = {}

    def follow(self, version: str | None) -> bool:
        """Load ``version`` if it is new; returns whether it is now served."""
        current = self.holder.version
        if version is None or version == current:
            return False
        if current is not None and version < current:
            return False  # versions only move forward, as in the workers
        failed = self.failed.get(version)
        if failed is not None and time.time() - failed[0] < RETRY_FAILED_S:
            return False
        try:
            artifact = load_artifact(self.artifacts_dir, version)
            served = ServedVersion(ServingModel.from_artifact(artifact), artifact.metrics, artifact.created_at)
        except (MusicrecError, OSError, ValueError) as exc:
            self.refused += 1
            self.failed[version] = (time.time(), str(exc))
            log.error("cannot load model version %s for similar songs, still serving %s: %s", version, current, exc)
            return False
        self.failed.pop(version, None)
        if self.holder.swap(served, version):
            self.swaps += 1
            log.info("similar songs now from model version %s", version)
            return True
        return False

    def similar(self, song_id: str, k: int, depth: int) -> tuple[list[Similar] | None, str]:
        """The ``k`` songs closest to ``song_id`` by cosine, and the version they come from (None
        when the song is not in that version). Raises NoModel before any version is loaded.

        Cosine rather than the index's inner product: inner product favours songs with long vectors
        (the popular ones), so every song would get the same neighbours. The index still supplies
        the ``depth`` candidates (by inner product), which keeps a query sub-linear on HNSW."""
        served, version = self.holder.get()
        index = served.model.index
        row = int(index.rows(song_keys([song_id]))[0])
        if row < 0:
            return None, version
        query = index.factors[row:row + 1]
        keys, _ = index.search(query, min(len(index), max(depth, k + 1)))
        keys = keys[0][keys[0] >= 0]
        rows = index.rows(keys)
        rows = rows[(rows >= 0) & (rows != row)]
        vectors = index.factors[rows].astype(np.float64)
        q = query[0].astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(q)
        cosine = np.divide(vectors @ q, norms, out=np.zeros(len(rows)), where=norms > 0)
        order = np.argsort(-cosine, kind="stable")[:k]
        names = index.names[rows[order]]
        return [Similar(str(n), float(s)) for n, s in zip(names, cosine[order], strict=True)], version


# -- the monitor ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    redis_error: str | None
    published_version: str | None
    published_metrics: dict[str, Any]
    workers: tuple[WorkerView, ...]
    events_per_s: float
    freshness: FreshnessView
    lag: Lag

    @property
    def refused(self) -> int:
        return sum(w.refused for w in self.workers)

    @property
    def live_workers(self) -> int:
        return sum(not w.stale for w in self.workers)


class Monitor:
    """Owns the app's background view of the system; see the module docstring."""

    def __init__(self, settings: Settings, redis_handle: RedisHandle) -> None:
        cfg = settings.stream
        self.settings = settings
        self.redis = redis_handle
        self.keys = RedisKeys(cfg.redis_namespace)
        self.pattern = recs_pattern(self.keys)
        self.rates = EventRates()
        self.freshness = FreshnessSampler()
        self.lag_probe = LagProbe(cfg)
        self.index = LiveIndex(cfg.artifacts_dir)
        self._lag = Lag(False, error="not measured yet")
        self._manifest_metrics: tuple[str, dict[str, Any]] | None = None
        now = time.time()
        self.snapshot = Snapshot(now, "not polled yet", None, {}, (), 0.0, self.freshness.view(now), self._lag)

    def published_version(self) -> str | None:
        with translate_errors("reading the model pointer"):
            raw = self.redis.get().get(self.keys.model_pointer())
        return None if raw is None else as_text(raw)

    def _metrics_of(self, version: str | None) -> dict[str, Any]:
        """The manifest's ``metrics`` of ``version`` (cached: it changes only with the version)."""
        if version is None:
            return {}
        if self._manifest_metrics is None or self._manifest_metrics[0] != version:
            try:
                metrics = read_manifest(self.settings.stream.artifacts_dir, version).get("metrics", {})
            except ArtifactError as exc:
                return {"error": str(exc)}
            self._manifest_metrics = (version, metrics)
        return self._manifest_metrics[1]

    def _workers(self, client: redis.Redis, now: float) -> tuple[WorkerView, ...]:
        with translate_errors("reading worker stats"):
            names = sorted(client.scan_iter(self.keys.stats_pattern(), count=100))
            raws = client.mget(names) if names else []
        views = []
        for raw in raws:
            s = parse_stats(raw) if raw is not None else None
            if s is None:
                continue
            worker, updated = s["worker"], float(s.get("updated_at", 0.0))
            self.rates.observe(worker, updated, int(s.get("events", 0)))
            views.append(WorkerView(worker, s.get("version"), int(s.get("events", 0)), int(s.get("refused", 0)),
                                    int(s.get("users", 0)), int(s.get("batches", 0)),
                                    float(s.get("last_batch_ms", 0.0)), updated, max(0.0, now - updated),
                                    self.rates.rate(worker, now)))
        self.rates.keep_only({v.worker for v in views})
        return tuple(views)

    def poll(self) -> Snapshot:
        """One pass over Redis: worker stats, the model pointer and a freshness sample."""
        now = time.time()
        try:
            client = self.redis.get()
            workers = self._workers(client, now)
            published = self.published_version()
            self.freshness.sample(client, self.pattern, now)
        except ServiceUnavailable as exc:
            prev = self.snapshot
            self.snapshot = Snapshot(now, str(exc), prev.published_version, prev.published_metrics, prev.workers,
                                     prev.events_per_s, prev.freshness, self._lag)
            return self.snapshot
        self.snapshot = Snapshot(now, None, published, self._metrics_of(published), workers,
                                 sum(w.events_per_s for w in workers), self.freshness.view(now), self._lag)
        return self.snapshot

    def follow_model(self) -> bool:
        return self.index.follow(self.published_version())

    def measure_lag(self) -> Lag:
        self._lag = self.lag_probe.measure()
        return self._lag

    def close(self) -> None:
        self.lag_probe.close()
        self.redis.close()


# -- Prometheus text exposition -------------------------------------------------------------------
def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        self.lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{inner}}} {_num(value)}" if inner else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_prometheus(snap: Snapshot, served: tuple[ServedVersion, str] | None, index: LiveIndex) -> str:
    """Prometheus text format 0.0.4 of a snapshot and the served similar-songs index."""
    out = _Exposition()
    out.family("musicrec_events_per_second", "gauge",
               f"Events/s consumed by all workers, from their counters over the last {RATE_WINDOW_S:.0f} s.")
    out.sample("musicrec_events_per_second", snap.events_per_s)
    out.family("musicrec_worker_events_total", "counter", "Valid events consumed, per worker process.")
    for w in snap.workers:
        out.sample("musicrec_worker_events_total", w.events, worker=w.worker)
    out.family("musicrec_worker_refused_total", "counter",
               "Messages refused to the dead-letter topic, per worker process.")
    for w in snap.workers:
        out.sample("musicrec_worker_refused_total", w.refused, worker=w.worker)
    out.family("musicrec_dlq_messages", "gauge", "Messages refused to the dead-letter topic by the workers "
               "whose stats are in Redis (sum of musicrec_worker_refused_total).")
    out.sample("musicrec_dlq_messages", snap.refused)
    out.family("musicrec_worker_last_batch_seconds", "gauge", "Processing time of each worker's last micro-batch.")
    for w in snap.workers:
        out.sample("musicrec_worker_last_batch_seconds", w.last_batch_ms / 1000.0, worker=w.worker)
    out.family("musicrec_worker_stats_age_seconds", "gauge", "Age of each worker's last published stats.")
    for w in snap.workers:
        out.sample("musicrec_worker_stats_age_seconds", w.age_s, worker=w.worker)
    out.family("musicrec_workers", "gauge", f"Workers whose stats are younger than {STATS_STALE_S:.0f} s.")
    out.sample("musicrec_workers", snap.live_workers)

    out.family("musicrec_consumer_lag_available", "gauge", "1 when the consumer lag could be measured.")
    out.sample("musicrec_consumer_lag_available", 1 if snap.lag.available else 0)
    out.family("musicrec_consumer_lag", "gauge", "Events not yet committed by the workers' consumer group, "
               "per partition of the events topic.")
    for p, n in sorted(snap.lag.partitions.items()):
        out.sample("musicrec_consumer_lag", n, partition=str(p))

    f = snap.freshness
    out.family("musicrec_freshness_seconds", "histogram", "Event -> Redis freshness (updated_at - produced_at) "
               "of sampled recommendation writes.")
    for bound, count in zip(f.buckets, f.counts, strict=False):
        out.sample("musicrec_freshness_seconds_bucket", count, le=_num(bound))
    out.sample("musicrec_freshness_seconds_bucket", f.count, le="+Inf")
    out.sample("musicrec_freshness_seconds_sum", f.total)
    out.sample("musicrec_freshness_seconds_count", f.count)
    out.family("musicrec_freshness_recent_seconds", "gauge",
               f"Percentiles of the sampled freshness over the last {FRESHNESS_WINDOW_S:.0f} s (NaN: no sample).")
    for q, v in (("0.5", f.p50), ("0.99", f.p99)):
        out.sample("musicrec_freshness_recent_seconds", math.nan if v is None else v, quantile=q)

    out.family("musicrec_model_published_info", "gauge", "The model version the pointer in Redis names.")
    if snap.published_version is not None:
        out.sample("musicrec_model_published_info", 1, version=snap.published_version)
    out.family("musicrec_index_info", "gauge", "The model version the API's similar-songs index serves.")
    out.family("musicrec_index_songs", "gauge", "Songs in the API's similar-songs index.")
    if served is not None:
        out.sample("musicrec_index_info", 1, version=served[1], kind=served[0].model.kind)
        out.sample("musicrec_index_songs", len(served[0].model.index))
    out.family("musicrec_index_swaps_total", "counter", "Model versions the API swapped in.")
    out.sample("musicrec_index_swaps_total", index.swaps)
    out.family("musicrec_index_refused_versions_total", "counter", "Model versions the API failed to load.")
    out.sample("musicrec_index_refused_versions_total", index.refused)
    out.family("musicrec_redis_up", "gauge", "1 when the last background poll reached Redis.")
    out.sample("musicrec_redis_up", 0 if snap.redis_error else 1)
    return out.text()
