"""Events per second from the workers' published counters, and each worker's view for the API."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

STATS_STALE_S = 10.0  # workers publish stats every 2 s (stream.worker.app); 5 missed publishes = stale
RATE_WINDOW_S = 10.0  # events/s is averaged over this much of the workers' counter history


@dataclass(frozen=True)
class WorkerView:
    worker: str  # the process (one Redis stats key each): "<worker_id>-<pid>"
    worker_id: str  # the stable name (MUSICREC_WORKER_ID or the host name): the metrics' label
    started_at: float
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


def worker_views(stats: list[dict[str, Any]], rates: EventRates, now: float) -> tuple[WorkerView, ...]:
    """Each worker's stats as the API shows them, its events/s from ``rates`` (which learn them)."""
    views = []
    for s in stats:
        worker, updated = s["worker"], float(s.get("updated_at", 0.0))
        rates.observe(worker, updated, int(s.get("events", 0)))
        # stats of a worker older than the stable name carry none: its process name stands in
        views.append(WorkerView(worker, str(s.get("worker_id") or worker), float(s.get("started_at", 0.0)),
                                s.get("version"), int(s.get("events", 0)), int(s.get("refused", 0)),
                                int(s.get("users", 0)), int(s.get("batches", 0)), float(s.get("last_batch_ms", 0.0)),
                                updated, max(0.0, now - updated), rates.rate(worker, now)))
    rates.keep_only({v.worker for v in views})
    return tuple(views)


def newest_per_name(workers: tuple[WorkerView, ...]) -> dict[str, tuple[WorkerView, int]]:
    """Per stable worker name, its newest process and how many processes publish under it.

    A restarted worker is a new process under the same name; its counters start again from 0,
    which Prometheus reads as a counter reset, so the old process's leftover stats (they expire
    after a few minutes) must not be added in. Two live processes sharing a name is a
    misconfiguration the process count shows."""
    out: dict[str, tuple[WorkerView, int]] = {}
    for w in workers:
        best, n = out.get(w.worker_id, (w, 0))
        out[w.worker_id] = (w if (w.started_at, w.updated_at) >= (best.started_at, best.updated_at) else best, n + 1)
    return out
