"""What one API app owns, on ``app.state.musicrec``: two apps in one process (tests) share nothing."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from index_manager.keys import song_keys
from offline.removals import HiddenSongs
from online_models.serving import ServingModel
from stream.abtest import current_test, results
from stream.api.monitor import Monitor
from stream.api.prometheus import ApiMetrics
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import LazyRedis, Recs, RecsClient, RedisKeys, translate_errors
from stream.settings import Settings, StreamConfig
from stream.worker.stats import read_stats

# POST /events answers within seconds when Kafka is down (503), rather than after the producer's
# default minute of retries
PRODUCER_CONNECT_ATTEMPTS = 1
PRODUCER_MAX_BLOCK_MS = 5000


@dataclass
class ApiState:
    settings: Settings
    redis: LazyRedis
    monitor: Monitor
    page: str
    metrics: ApiMetrics
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _hidden: HiddenSongs | None = None
    _producer: EventProducer | None = None
    _producer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cfg(self) -> StreamConfig:
        return self.settings.stream

    def recs_client(self) -> RecsClient:
        return RecsClient(self.cfg.redis_url, self.cfg.redis_namespace, client=self.redis.get())

    def read_recs(self, user_id: str, k: int) -> tuple[Recs | None, str | None]:
        """The user's list and the A/B arm that wrote it (None outside a test, and for users
        served the popularity fallback). Workers assign arms when they write, so reads stay one GET."""
        recs = self.recs_client().get(user_id, k)
        return recs, None if recs is None or recs.fallback else recs.arm

    def read_many(self, user_ids: list[str], k: int) -> list[dict[str, Any]]:
        """Each user's list as the API shows it (one MGET); nothing written yet = an empty fallback."""
        return [recs_json(user, recs) for user, recs in zip(user_ids, self.recs_client().get_many(user_ids, k),
                                                            strict=True)]

    def producer(self) -> EventProducer:
        """The app's one Kafka producer (thread-safe), made on first use: the topics are created then."""
        with self._producer_lock:
            if self._producer is None:
                ensure_topics(self.cfg, attempts=PRODUCER_CONNECT_ATTEMPTS)
                self._producer = EventProducer(self.cfg, attempts=PRODUCER_CONNECT_ATTEMPTS,
                                               max_block_ms=PRODUCER_MAX_BLOCK_MS)
            return self._producer

    def hide_from(self, model: ServingModel) -> HiddenSongs:
        """Bring ``model``'s index up to date with the hidden songs (similar songs leave them out)."""
        if self._hidden is None:
            self._hidden = HiddenSongs(self.cfg.catalog_dir)
        self._hidden.refresh()
        keys = song_keys(np.asarray(self._hidden.hidden(), dtype=object))
        if not np.array_equal(keys, model.index.hidden):
            model.index.unhide(model.index.hidden)
            model.index.hide(keys)
        return self._hidden

    def ab_results(self) -> dict[str, Any]:
        client, keys = self.redis.get(), RedisKeys(self.cfg.redis_namespace)
        with translate_errors("reading the A/B test"):
            return results(current_test(client, keys), read_stats(client, keys))

    def report_path(self) -> Path:
        return Path(self.cfg.data_dir) / "reports" / "prequential.png"

    def close(self) -> None:
        with self._producer_lock:
            if self._producer is not None:
                self._producer.close()
                self._producer = None
        self.monitor.close()


def recs_json(user_id: str, recs: Recs | None) -> dict[str, Any]:
    """A RecsOut body: the stored list, or for a fresh system (no list, no popularity yet) an empty
    fallback, so readers can be deployed before the first worker writes anything."""
    if recs is None:
        return {"user_id": user_id, "model_version": None, "updated_at": None, "last_event": None,
                "fallback": True, "arm": None, "items": []}
    return dict(recs.to_json(), user_id=user_id, arm=None if recs.fallback else recs.arm)


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.musicrec
    return state
