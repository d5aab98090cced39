"""What one API app owns, on ``app.state.musicrec``: two apps in one process (tests) share nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from stream.abtest import current_test, results
from stream.api.monitor import Monitor
from stream.redis_store import LazyRedis, Recs, RecsClient, RedisKeys, translate_errors
from stream.settings import Settings, StreamConfig
from stream.worker.stats import read_stats


@dataclass
class ApiState:
    settings: Settings
    redis: LazyRedis
    monitor: Monitor
    page: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

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

    def ab_results(self) -> dict[str, Any]:
        client, keys = self.redis.get(), RedisKeys(self.cfg.redis_namespace)
        with translate_errors("reading the A/B test"):
            return results(current_test(client, keys), read_stats(client, keys))

    def report_path(self) -> Path:
        return Path(self.cfg.data_dir) / "reports" / "prequential.png"


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.musicrec
    return state
