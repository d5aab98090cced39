"""Helpers of the fault and soak tests: a paced producer thread, and checks of the log and Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from offline.eventlog import EventLog
from online_models.batch import EventBatch
from stream.events import encode_batch
from stream.kafka_io import client_config
from stream.redis_store import RecsClient
from stream.settings import StreamConfig


@dataclass
class SteadyProducer:
    """Produces valid listening events at ``rate`` per second from a thread, round-robin over
    ``n_users`` users, with unique event ids ``<tag>-<n>``; remembers what it sent."""

    cfg: StreamConfig
    rate: float = 2000.0
    n_users: int = 300
    tag: str = "ev"
    tick: float = 0.05
    sent: int = 0
    last_of_user: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    error: BaseException | None = None
    failed: list[str] = field(default_factory=list)  # sends the broker never acknowledged

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"producer-{self.tag}", daemon=True)
        self._rng = np.random.default_rng(0)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        # kafka-python's flush() does not raise for records that failed after their retries: every
        # send's outcome is checked, so a lost event is never blamed on the worker by mistake
        try:
            producer = KafkaProducer(**client_config(self.cfg), linger_ms=10, acks=1, retries=5)
            try:
                t0 = time.perf_counter()
                while not self._stop.is_set():
                    due = int((time.perf_counter() - t0) * self.rate) - self.sent
                    if due > 0:
                        batch = self._chunk(due)
                        for (key, value), event_id in zip(encode_batch(batch), batch.event_ids.tolist(),
                                                          strict=True):
                            future = producer.send(self.cfg.events_topic, key=key, value=value)
                            future.add_errback(lambda exc, event_id=event_id: self.failed.append(event_id))
                    self._stop.wait(self.tick)
                producer.flush(60)
            finally:
                producer.close(10)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def _chunk(self, n: int) -> EventBatch:
        idx = np.arange(self.sent, self.sent + n)
        users = np.array([f"u{i % self.n_users}" for i in idx], dtype=object)
        ids = np.array([f"{self.tag}-{i}" for i in idx], dtype=object)
        songs = np.array([f"s{s}" for s in self._rng.integers(0, 120, n)], dtype=object)
        batch = EventBatch.from_columns(users, songs, None, np.full(n, time.time()), None, ids)
        self.last_of_user.update(zip(users.tolist(), ids.tolist(), strict=True))
        self.ids.extend(ids.tolist())
        self.sent += n
        return batch

    def stop(self) -> int:
        """Stop, flush (every event acknowledged by the broker) and return how many were sent."""
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}") from self.error
        if self.failed:
            raise AssertionError(f"the broker did not take {len(self.failed)} produced events, e.g. {self.failed[:5]}")
        return self.sent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_all_logged(log_dir: Path, ids: list[str], timeout: float, context: Callable[[], str] = str) -> None:
    """Wait until every one of ``ids`` is in the log; on failure, say which are missing."""
    try:
        wait_for(lambda: log_counts(log_dir, ids)[2] == 0, timeout, "every produced event in the log", every=0.5)
    except AssertionError:
        logged = set(EventLog(log_dir).read().event_ids)
        missing = [i for i in ids if i not in logged]
        raise AssertionError(f"{len(missing)} produced events are not in the log: {missing[:10]} ... {missing[-3:]}"
                             f"\n{context()}") from None


def log_counts(log_dir: Path, ids: list[str], attempts: int = 3) -> tuple[int, int, int]:
    """(rows in the log's segments, distinct event ids among them, how many of ``ids`` are missing).
    Counted again when a worker merged a listed segment away meanwhile."""
    import duckdb

    log = EventLog(log_dir)
    for attempt in range(attempts):
        try:
            with closing(log.connect()) as con:
                row = con.execute("SELECT count(*), count(DISTINCT event_id) FROM raw_events").fetchall()[0]
                con.register("wanted", _ids_table(ids))
                missing = con.execute("SELECT count(*) FROM wanted ANTI JOIN raw_events USING (event_id)"
                                      ).fetchall()[0]
            break
        except duckdb.IOException:
            if attempt == attempts - 1:
                raise
    assert row is not None and missing is not None
    return int(row[0]), int(row[1]), int(missing[0])


def _ids_table(ids: list[str]) -> Any:
    import pyarrow as pa

    return pa.table({"event_id": pa.array(ids, pa.string())})


def stale_users(client: RecsClient, last_of_user: dict[str, str]) -> list[str]:
    """Users whose Redis value does not carry their last produced event."""
    users = sorted(last_of_user)
    values = client.get_many(users, 1)
    return [u for u, v in zip(users, values, strict=True)
            if v is None or v.fallback or not v.last_event or v.last_event["event_id"] != last_of_user[u]]


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def publish_content_model(settings: Any) -> str:
    """Seed the log and a catalog whose content says each song's taste cluster (odd/even, plus
    noise), train ALS with its content projection, publish it and create the topics."""
    from offline.catalog import CatalogRows, CatalogStore
    from offline.retrain import retrain_als
    from stream.kafka_io import ensure_topics
    from tests.services.processes import publish
    from tests.synthetic import synthetic_log

    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    log.append(synthetic_log())
    rng = np.random.default_rng(0)
    CatalogStore(cfg.catalog_dir).append(CatalogRows(
        [f"s{i}" for i in range(120)], [f"t{i}" for i in range(120)], ["a"] * 120,
        ["odd" if i % 2 else "even" for i in range(120)],
        [{"x": float(rng.normal()), "y": float(rng.normal())} for i in range(120)]))
    result = retrain_als(log, cfg.artifacts_dir, settings.model, catalog=CatalogStore(cfg.catalog_dir))
    assert "content_weights" in result.artifact.arrays
    publish(settings, result.version)
    ensure_topics(cfg)
    return result.version
