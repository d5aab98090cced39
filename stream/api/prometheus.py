"""Prometheus text exposition (format 0.0.4) of the API's view of the system."""

from __future__ import annotations

import math

from index_manager.follower import VersionFollower
from online_models.serving import ServingModel
from stream.api.freshness import FRESHNESS_WINDOW_S
from stream.api.monitor import Snapshot
from stream.api.rates import RATE_WINDOW_S, STATS_STALE_S


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


def render_prometheus(snap: Snapshot, index: VersionFollower[ServingModel]) -> str:
    """Prometheus text format 0.0.4 of a snapshot and the API's similar-songs index."""
    served = index.holder.peek()
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
        out.sample("musicrec_index_info", 1, version=served.version, kind=served.model.kind)
        out.sample("musicrec_index_songs", len(served.model.index))
    out.family("musicrec_index_swaps_total", "counter", "Model versions the API swapped in.")
    out.sample("musicrec_index_swaps_total", index.swaps)
    out.family("musicrec_index_refused_versions_total", "counter", "Model versions the API failed to load.")
    out.sample("musicrec_index_refused_versions_total", index.refused)
    out.family("musicrec_redis_up", "gauge", "1 when the last background poll reached Redis.")
    out.sample("musicrec_redis_up", 0 if snap.redis_error else 1)
    return out.text()
