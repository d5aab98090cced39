"""``/metrics`` through ``prometheus_client``: the API's view of the system, its own ingestion
counters, and the standard process / platform / GC collectors, in one registry per app.

The view comes from the monitor's latest snapshot at scrape time (a custom collector), so a scrape
never waits on Redis or Kafka. Per-worker series are labelled with the worker's stable name
(``MUSICREC_WORKER_ID``, default the host name), so a restarted worker continues its series (the
counter restarts from 0, which Prometheus reads as a reset) rather than starting a new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from index_manager.follower import VersionFollower
from online_models.serving import ServingModel
from stream.api.freshness import FRESHNESS_WINDOW_S
from stream.api.monitor import Snapshot
from stream.api.rates import RATE_WINDOW_S, STATS_STALE_S, newest_per_name

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class SystemCollector(Collector):
    """Families built from a :class:`Snapshot` and the API's similar-songs index at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot], index: VersionFollower[ServingModel]) -> None:
        self.snapshot = snapshot
        self.index = index

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from self._workers(snap)
        yield from self._lag_and_freshness(snap)
        yield from self._model(snap)

    def _workers(self, snap: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("musicrec_events_per_second", "Events/s consumed by all workers, from their "
                                f"counters over the last {RATE_WINDOW_S:.0f} s.", value=snap.events_per_s)
        by_name = sorted(newest_per_name(snap.workers).items())
        events = CounterMetricFamily("musicrec_worker_events", "Valid events consumed, per worker (its newest "
                                     "process; restarts reset the counter).", labels=["worker"])
        refused = CounterMetricFamily("musicrec_worker_refused", "Messages refused to the dead-letter topic, "
                                      "per worker (its newest process).", labels=["worker"])
        batch = GaugeMetricFamily("musicrec_worker_last_batch_seconds", "Processing time of each worker's last "
                                  "micro-batch.", labels=["worker"])
        age = GaugeMetricFamily("musicrec_worker_stats_age_seconds", "Age of each worker's last published stats.",
                                labels=["worker"])
        processes = GaugeMetricFamily("musicrec_worker_processes", "Processes whose stats are in Redis under "
                                      "each worker name (more than 1 live: two workers share a name).",
                                      labels=["worker"])
        for name, (w, n) in by_name:
            events.add_metric([name], w.events)
            refused.add_metric([name], w.refused)
            batch.add_metric([name], w.last_batch_ms / 1000.0)
            age.add_metric([name], w.age_s)
            processes.add_metric([name], n)
        yield from (events, refused, batch, age, processes)
        yield GaugeMetricFamily("musicrec_dlq_messages", "Messages refused to the dead-letter topic by the "
                                "worker processes whose stats are in Redis.", value=snap.refused)
        yield GaugeMetricFamily("musicrec_workers", f"Worker processes whose stats are younger than "
                                f"{STATS_STALE_S:.0f} s.", value=snap.live_workers)

    def _lag_and_freshness(self, snap: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("musicrec_consumer_lag_available", "1 when the consumer lag could be measured.",
                                value=1 if snap.lag.available else 0)
        lag = GaugeMetricFamily("musicrec_consumer_lag", "Events not yet committed by the workers' consumer "
                                "group, per partition of the events topic.", labels=["partition"])
        for p, n in sorted(snap.lag.partitions.items()):
            lag.add_metric([str(p)], n)
        yield lag
        f = snap.freshness
        buckets = [(_bound(b), c) for b, c in zip(f.buckets, f.counts, strict=False)] + [("+Inf", f.count)]
        yield HistogramMetricFamily("musicrec_freshness_seconds", "Event -> Redis freshness (updated_at - "
                                    "produced_at) of sampled recommendation writes.", buckets=buckets,
                                    sum_value=f.total)
        recent = GaugeMetricFamily("musicrec_freshness_recent_seconds", "Percentiles of the sampled freshness "
                                   f"over the last {FRESHNESS_WINDOW_S:.0f} s (NaN: no sample).", labels=["quantile"])
        for q, v in (("0.5", f.p50), ("0.99", f.p99)):
            recent.add_metric([q], math.nan if v is None else v)
        yield recent

    def _model(self, snap: Snapshot) -> Iterator[Metric]:
        published = GaugeMetricFamily("musicrec_model_published_info", "The model version the pointer in Redis "
                                      "names.", labels=["version"])
        if snap.published_version is not None:
            published.add_metric([snap.published_version], 1)
        yield published
        served = self.index.holder.peek()
        info = GaugeMetricFamily("musicrec_index_info", "The model version the API's similar-songs index serves.",
                                 labels=["version", "kind"])
        songs = GaugeMetricFamily("musicrec_index_songs", "Songs in the API's similar-songs index.")
        if served is not None:
            info.add_metric([served.version, served.model.kind], 1)
            songs.add_metric([], len(served.model.index))
        yield from (info, songs)
        yield CounterMetricFamily("musicrec_index_swaps", "Model versions the API swapped in.",
                                  value=self.index.swaps)
        yield CounterMetricFamily("musicrec_index_refused_versions", "Model versions the API failed to load.",
                                  value=self.index.refused)
        yield GaugeMetricFamily("musicrec_redis_up", "1 when the last background poll reached Redis.",
                                value=0 if snap.redis_error else 1)


class ApiMetrics:
    """One app's registry: the system view, its own ingestion counters and the process collectors."""

    def __init__(self, snapshot: Callable[[], Snapshot], index: VersionFollower[ServingModel]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SystemCollector(snapshot, index))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http_events = Counter("musicrec_http_events", "Events received by POST /events, by outcome: "
                                   "accepted (produced to Kafka) or refused (the request was refused whole).",
                                   ["outcome"], registry=self.registry)
        for outcome in ("accepted", "refused"):
            self.http_events.labels(outcome)  # present from the start, at 0

    def render(self) -> bytes:
        return generate_latest(self.registry)
