"""Event -> Redis freshness as readers see it: a sample of the recommendation values in Redis."""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from stream.redis_store import Recs, RedisKeys, ScanCursor, mget, scan_step, translate_errors

FRESHNESS_WINDOW_S = 300.0  # p50/p99 cover values written in the last 5 minutes
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
SCAN_PER_TICK = 500  # recommendation keys sampled per pass: bounds the Redis and JSON work per second
SEEN_MAX = 100_000  # keys whose last sampled write is remembered, so one write is counted once
RECENT_MAX = 20_000  # freshness samples kept for the percentiles


def recs_pattern(keys: RedisKeys) -> str:
    """SCAN pattern of every user's recommendation key, derived from ``RedisKeys.recs`` so the key
    layout stays defined in one place (glob characters in the namespace are escaped)."""
    prefix = keys.recs("")
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"


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
        self.cursor: ScanCursor = 0
        self._seen: OrderedDict[bytes | str, float] = OrderedDict()
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_MAX)
        self._counts = [0] * (len(buckets) + 1)
        self._total = 0.0

    def observe(self, seconds: float, written_at: float) -> None:
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._total += seconds
        self._recent.append((written_at, seconds))

    def sample(self, client: redis.Redis, pattern: str, now: float) -> list[float]:
        """One bounded SCAN step; returns the freshness of each new write observed (seconds)."""
        with translate_errors("sampling recommendation values"):
            self.cursor, keys = scan_step(client, self.cursor, pattern, SCAN_PER_TICK)
            keys = keys[:2 * SCAN_PER_TICK]
            values = mget(client, keys)
        new: list[float] = []
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
            new.append(max(0.0, written - produced))
        return new

    def view(self, now: float) -> FreshnessView:
        while self._recent and self._recent[0][0] < now - FRESHNESS_WINDOW_S:
            self._recent.popleft()
        recent = np.array([s for _, s in self._recent], dtype=np.float64)
        p50, p99 = (float(q) for q in np.quantile(recent, [0.5, 0.99])) if len(recent) else (None, None)
        return FreshnessView(self.buckets, tuple(np.cumsum(self._counts).tolist()), self._total,
                             sum(self._counts), p50, p99, len(recent))
