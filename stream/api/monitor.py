"""What the read API watches in the background: the workers' counters, a sample of freshness, the
consumer lag and the published model version (followed into the API's own similar-songs index).

One :class:`Monitor` per app. Every method here blocks on Redis, Kafka or the disk, so the API runs
them in threads; each pass ends by replacing one frozen :class:`Snapshot`. Request handlers only
read the latest snapshot reference, so they never see a half-updated view and never wait on a poll.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from index_manager.artifacts import ArtifactError
from index_manager.follower import VersionFollower
from index_manager.registry import VersionRegistry
from online_models.serving import ServingModel
from stream.api.freshness import FreshnessSampler, FreshnessView, recs_pattern
from stream.api.history import Timeline
from stream.api.lag import Lag, LagProbe
from stream.api.rates import EventRates, WorkerView, worker_views
from stream.errors import ServiceUnavailable
from stream.redis_store import LazyRedis, RedisKeys, version_registry
from stream.settings import Settings
from stream.worker.stats import read_stats


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

    def __init__(self, settings: Settings, redis: LazyRedis) -> None:
        cfg = settings.stream
        self.settings = settings
        self.redis = redis
        self.keys = RedisKeys(cfg.redis_namespace)
        self.pattern = recs_pattern(self.keys)
        self.rates = EventRates()
        self.freshness = FreshnessSampler()
        self.timeline = Timeline()
        self.lag_probe = LagProbe(cfg)
        # the similar-songs index follows the pointer like the workers do
        self.index: VersionFollower[ServingModel] = VersionFollower(partial(ServingModel.load, cfg.artifacts_dir),
                                                                    what="similar-songs index")
        self._lag = Lag(False, error="not measured yet")
        self._manifest_metrics: tuple[str, dict[str, Any]] | None = None
        now = time.time()
        self.snapshot = Snapshot(now, "not polled yet", None, {}, (), 0.0, self.freshness.view(now), self._lag)

    def _registry(self) -> VersionRegistry:
        return version_registry(self.redis.get(), self.keys, self.settings.stream.artifacts_dir)

    def _metrics_of(self, version: str | None) -> dict[str, Any]:
        """The manifest's ``metrics`` of ``version`` (cached: it changes only with the version)."""
        if version is None:
            return {}
        if self._manifest_metrics is None or self._manifest_metrics[0] != version:
            try:
                metrics = self._registry().manifest(version).get("metrics", {})
            except ArtifactError as exc:
                return {"error": str(exc)}
            self._manifest_metrics = (version, metrics)
        return self._manifest_metrics[1]

    def poll(self) -> Snapshot:
        """One pass over Redis: worker stats, the model pointer and a freshness sample."""
        now = time.time()
        try:
            client = self.redis.get()
            workers = worker_views(read_stats(client, self.keys), self.rates, now)
            published = self._registry().published()
            fresh = self.freshness.sample(client, self.pattern, now)
        except ServiceUnavailable as exc:
            prev = self.snapshot
            self.snapshot = Snapshot(now, str(exc), prev.published_version, prev.published_metrics, prev.workers,
                                     prev.events_per_s, prev.freshness, self._lag)
            return self.snapshot
        rate = sum(w.events_per_s for w in workers)
        self.timeline.record(now, rate, fresh)
        self.snapshot = Snapshot(now, None, published, self._metrics_of(published), workers, rate,
                                 self.freshness.view(now), self._lag)
        return self.snapshot

    def follow_model(self) -> bool:
        return self.index.follow(self._registry().published())

    def measure_lag(self) -> Lag:
        self._lag = self.lag_probe.measure()
        return self._lag

    def close(self) -> None:
        self.lag_probe.close()
        self.redis.close()
