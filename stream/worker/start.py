"""Worker start-up: rebuild the online state from the log, serve the published version, then consume."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from stream.kafka_io import ensure_topics
from stream.redis_store import connect_to
from stream.settings import Settings
from stream.worker.lists import ACTIVE_USERS
from stream.worker.memory import pin_mmap_threshold
from stream.worker.parts import WorkerParts

LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}
RESTORE_CHUNK = 200_000  # events folded in at a time while rebuilding


def restore(parts: WorkerParts, chunk: int = RESTORE_CHUNK) -> int:
    """Rebuild the online state from the event log (the state's source of truth) and serve the
    published version; the log's last ``warmup_events`` are replayed under that version as a live
    stream (lists, then events), which teaches the ranker again. Returns events read."""
    events = parts.log.read()
    tail = max(len(events) - parts.settings.stream.warmup_events, 0)
    for start in range(0, tail, chunk):
        parts.model.partial_fit(events.take(slice(start, min(start + chunk, tail))))
    candidate = parts.versions.prepare(parts.registry.published())
    if candidate is not None:
        parts.install(candidate)
    parts.model.replay(events.take(slice(tail, None)))
    parts.active.touch(events.user_ids[-ACTIVE_USERS:].tolist())
    # what Kafka may redeliver (not yet committed when the last worker stopped) is in the log and
    # therefore already in the state just rebuilt: remember the log's newest event ids
    parts.applied.remember(parts.log.recent_event_ids(parts.applied.limit))
    return len(events)


def start_worker(settings: Settings, loglevel: str = "warn") -> None:
    """``musicrec worker``: run until SIGINT/SIGTERM."""
    from stream.worker.app import WorkerApp  # Faust is imported only by the process that runs it

    if loglevel not in LOG_LEVELS:
        raise ValueError(f"--loglevel must be one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=LOG_LEVELS[loglevel], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_mmap_threshold()
    cfg = settings.stream
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    ensure_topics(cfg)
    parts = WorkerParts.build(settings, connect_to(cfg))
    n = restore(parts)
    written = parts.active.refresh(parts.lists)
    print(f"worker {parts.worker_id}: restored {n} events from {cfg.log_dir}, model "
          f"{parts.model.holder.version or 'none (popularity)'}, refreshed {written} users", file=sys.stderr)
    WorkerApp(parts).run(loglevel)
