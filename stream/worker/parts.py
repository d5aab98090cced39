"""One worker process's parts, built once and wired together; the Faust app and start-up use them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from index_manager.follower import VersionFollower
from index_manager.registry import VersionRegistry
from offline.catalog import CatalogStore
from offline.eventlog import EventLog
from offline.removals import HiddenSongs
from online_models.online import OnlineALS
from online_models.parallel import Parts
from online_models.serving import ServingModel
from stream.abtest import ABTest, current_test
from stream.redis_store import RecsWriter, RedisKeys, version_registry
from stream.settings import Settings
from stream.worker.ab_arm import ABArm
from stream.worker.backfill import Backfill, Ownership
from stream.worker.catalog import CatalogIntake
from stream.worker.dedup import APPLIED_IDS, AppliedEvents
from stream.worker.lists import ActiveUsers, ListWriter
from stream.worker.memory import rss_mb
from stream.worker.partitions import Holdings
from stream.worker.processor import BatchProcessor
from stream.worker.removals import Removals
from stream.worker.stats import Counters, LatencyWindow, publish_stats, worker_name


@dataclass
class WorkerParts:
    settings: Settings
    worker_id: str
    redis_client: redis.Redis
    keys: RedisKeys
    registry: VersionRegistry
    model: OnlineALS
    versions: VersionFollower[ServingModel]  # the published version, into ``model``'s holder
    ab: ABArm
    catalog: CatalogIntake
    active: ActiveUsers
    lists: ListWriter
    applied: AppliedEvents
    counters: Counters
    freshness: LatencyWindow
    processor: BatchProcessor
    backfill: Backfill
    removals: Removals
    holdings: Holdings  # the events-topic partitions held, and whose users they hold

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis, worker_id: str | None = None,
              applied_ids: int = APPLIED_IDS) -> WorkerParts:
        cfg = settings.stream
        worker_id = worker_id or f"{worker_name(cfg)}-{os.getpid()}"
        keys = RedisKeys(cfg.redis_namespace)
        model = OnlineALS(settings.model, parts=Parts(cfg.serve_threads))
        load = partial(ServingModel.load, cfg.artifacts_dir)
        ab = ABArm(model, load)
        counters, freshness, active = Counters(), LatencyWindow(), ActiveUsers()
        lists = ListWriter(model, ab, RecsWriter(client, keys), cfg.k)
        applied = AppliedEvents(applied_ids)
        log = EventLog(cfg.log_dir)
        backfill = Backfill(lists, Ownership(), cfg.backfill_batch)
        holdings = Holdings(cfg.partitions)
        processor = BatchProcessor(model, log, worker_id, lists, ab, applied, active, counters, freshness,
                                   backfill=backfill, holdings=holdings)
        removals = Removals(model, log, HiddenSongs(cfg.catalog_dir), lists.writer, backfill, active, counters)
        removals.load()
        return cls(settings, worker_id, client, keys, version_registry(client, keys, cfg.artifacts_dir), model,
                   VersionFollower(load, model.holder), ab, CatalogIntake(CatalogStore(cfg.catalog_dir), counters),
                   active, lists, applied, counters, freshness, processor, backfill, removals, holdings)

    @property
    def log(self) -> EventLog:
        return self.processor.log

    def served(self) -> list[ServingModel]:
        """The versions served now, published first (one read of each holder)."""
        published = self.model.holder.peek()
        treatment = self.ab.treatment()
        return [m for m in (None if published is None else published.model, treatment) if m is not None]

    def install(self, candidate: ServingModel) -> bool:
        """Swap a prepared published version in (run where batches run: it touches the live song
        set): the songs indexed from content since its training cut-off go in before it serves."""
        self.catalog.add_to(candidate)
        self.removals.apply_to(candidate)
        return self.versions.install(candidate, candidate.version)

    def start_test(self, test: ABTest, treatment: ServingModel) -> None:
        self.catalog.add_to(treatment)
        self.removals.apply_to(treatment)
        self.ab.start(test, treatment)

    def known_users(self) -> list[str]:
        """Every user the online state or a served version knows, the recently active first;
        forgotten users whose past a served version still holds are not among them."""
        state = self.model.state
        users = dict.fromkeys(self.active.newest_first())
        users.update(dict.fromkeys(state.history.users().tolist()))
        for model in self.served():
            users.update(dict.fromkeys(u for u in model.user_names.tolist() if u not in state.forgotten))
        return list(users)

    def backfill_all(self) -> int:
        """Queue every known user for a list (at start, after a swap); returns how many."""
        users = self.known_users()
        self.backfill.enqueue(users)
        return len(users)

    def wanted_test(self) -> ABTest | None:
        return current_test(self.redis_client, self.keys)

    def publish_stats(self) -> None:
        p50, p95, p99 = self.freshness.percentiles_ms()
        self.counters.lists_backfilled, self.counters.backfill_pending = self.backfill.written, len(self.backfill)
        stats: dict[str, Any] = dict(
            self.counters.as_dict(), freshness_p50_ms=p50, freshness_p95_ms=p95, freshness_p99_ms=p99,
            version=self.model.holder.version, users=len(self.model.state), swaps=self.versions.swaps,
            refused_versions=self.versions.refused, worker_id=worker_name(self.settings.stream),
            partitions=sorted(self.holdings.partitions), rss_mb=round(rss_mb(), 1))
        ab = self.ab.summary()
        if ab is not None:
            stats["ab"] = ab
        publish_stats(self.redis_client, self.keys, self.worker_id, stats)
