"""Replay an event file into Kafka at a fixed rate (load tests, demos, backfills)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from online_models.batch import EventBatch
from stream.kafka_io import EventProducer


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


def replay(producer: EventProducer, events: EventBatch, rate: float = 0.0,
           on_progress: Callable[[int], None] | None = None, tick: float = 0.02) -> ReplayResult:
    """Send ``events`` in their order; ``rate`` events/s (0 = as fast as the producer goes).
    Pacing is per tick of ``tick`` seconds so high rates cost no per-event sleeps."""
    n = len(events)
    t0 = time.perf_counter()
    sent = 0
    step = max(1, int(rate * tick)) if rate > 0 else 1000
    while sent < n:
        chunk = events.take(slice(sent, min(n, sent + step)))
        producer.send_events(chunk)
        sent += len(chunk)
        if on_progress is not None:
            on_progress(len(chunk))
        if rate > 0:
            ahead = sent / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    return ReplayResult(sent, time.perf_counter() - t0)
