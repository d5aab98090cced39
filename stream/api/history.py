"""The dashboard's last 15 minutes: events/s and event -> Redis freshness, in fixed time buckets.

The monitor records one point per background pass (about every second). Points fall into
``BUCKET_S`` buckets: events/s is the mean of the pass figures in a bucket, freshness the p50 and
p99 of the writes first sampled in it. A bucket with no sampled write has no freshness (null),
which is not the same as fresh; a bucket with no pass at all (the API was down) is left out.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HISTORY_S = 900.0
BUCKET_S = 10.0


@dataclass
class _Bucket:
    start: float
    rate_sum: float = 0.0
    passes: int = 0
    freshness: list[float] = field(default_factory=list)


class Timeline:
    def __init__(self, span: float = HISTORY_S, bucket: float = BUCKET_S) -> None:
        if span <= 0 or bucket <= 0 or bucket > span:
            raise ValueError(f"need 0 < bucket <= span, got bucket={bucket}, span={span}")
        self.span = span
        self.bucket = bucket
        self._buckets: deque[_Bucket] = deque()
        self._lock = threading.Lock()  # the monitor records in a thread while requests read

    def record(self, now: float, events_per_s: float, freshness: list[float]) -> None:
        """One background pass: the workers' events/s now, and the freshness of writes new in it."""
        with self._lock:
            self._record(now, events_per_s, freshness)

    def _record(self, now: float, events_per_s: float, freshness: list[float]) -> None:
        start = now - now % self.bucket
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        last = self._buckets[-1]
        if last.start > start:  # the clock went back: keep the series ordered, drop the pass
            return
        last.rate_sum += events_per_s
        last.passes += 1
        last.freshness.extend(freshness)
        while self._buckets and self._buckets[0].start < now - self.span:
            self._buckets.popleft()

    def to_json(self) -> dict[str, Any]:
        """Columns of equal length, oldest first: bucket start (unix s), events/s, freshness p50 and p99 (s)."""
        t: list[float] = []
        rate: list[float] = []
        p50: list[float | None] = []
        p99: list[float | None] = []
        with self._lock:
            buckets = [_Bucket(b.start, b.rate_sum, b.passes, list(b.freshness)) for b in self._buckets]
        for b in buckets:
            t.append(b.start)
            rate.append(b.rate_sum / b.passes if b.passes else 0.0)
            if b.freshness:
                q50, q99 = np.quantile(np.asarray(b.freshness, dtype=np.float64), [0.5, 0.99])
                p50.append(float(q50))
                p99.append(float(q99))
            else:
                p50.append(None)
                p99.append(None)
        return {"span_s": self.span, "bucket_s": self.bucket, "t": t, "events_per_s": rate,
                "freshness_p50_s": p50, "freshness_p99_s": p99}
