"""Worker start-up and rebalances: join the group, and for each partition assigned rebuild its users'
online state from the log (serving the published version), drop the users of partitions taken away,
evict users inactive for ``MUSICREC_STATE_TTL``."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from stream.errors import ServiceUnavailable
from stream.kafka_io import ensure_topics, topic_partitions
from stream.redis_store import connect_to
from stream.settings import Settings
from stream.worker.lists import ACTIVE_USERS
from stream.worker.memory import pin_mmap_threshold
from stream.worker.parts import WorkerParts

LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}
RESTORE_CHUNK = 50_000  # events folded in at a time while restoring; the loop (heartbeats) runs in between
# a user's events older than this many half-lives before their latest weigh < 0.1%: not restored
RESTORE_HALF_LIVES = 10
DAY_S = 86400.0

log = logging.getLogger("musicrec.worker")


def restore_window_s(settings: Settings) -> float:
    """How far back before each user's latest event a restore reads (0 = everything)."""
    half_life = settings.model.half_life_days
    return RESTORE_HALF_LIVES * half_life * DAY_S if half_life > 0 else 0.0


async def restore_partitions(parts: WorkerParts, partitions: set[int], chunk: int = RESTORE_CHUNK) -> int:
    """Rebuild the online state of the users of ``partitions`` from the event log (the state's source
    of truth): only their events, only within :func:`restore_window_s` of each user's latest, and only
    users active within ``MUSICREC_STATE_TTL``. The events but the last ``warmup_events`` (their share
    for these partitions) are folded in; then the published version is installed if none serves yet;
    then the tail is replayed under it as a live stream (lists, then events), which teaches the ranker
    again. Restored users are queued for their lists (the backfill). Returns events read.

    Runs on the event loop between rebalance steps (Kafka delivers nothing of these partitions until
    it returns), yielding between chunks so the consumer keeps heartbeating."""
    cfg, loop = parts.settings.stream, asyncio.get_running_loop()
    holdings = parts.holdings
    events, where = await loop.run_in_executor(None, lambda: parts.log.read_partitions(
        partitions, holdings.key_partitions, restore_window_s(parts.settings), cfg.state_ttl * DAY_S))
    # the warm-up is the latest stretch of the stream; a worker's stream is its partitions' share of it
    warmup = round(cfg.warmup_events * len(partitions) / max(holdings.n_partitions, len(partitions)))
    tail = max(len(events) - warmup, 0)
    for start in range(0, tail, chunk):
        parts.model.partial_fit(events.take(slice(start, min(start + chunk, tail))))
        await asyncio.sleep(0)
    first = parts.model.holder.peek() is None
    if first:
        try:
            candidate = await loop.run_in_executor(None, parts.versions.prepare, parts.registry.published())
        except ServiceUnavailable as exc:  # the versions timer installs it once Redis answers
            log.warning("cannot load the published version yet: %s", exc)
            candidate = None
        if candidate is not None:
            parts.install(candidate)
    for start in range(tail, len(events), chunk // 10):
        parts.model.replay(events.take(slice(start, min(start + chunk // 10, len(events)))))
        await asyncio.sleep(0)
    holdings.observe(events.user_ids, where, events.ts)
    holdings.partitions |= partitions
    recent = events.user_ids[-ACTIVE_USERS:]
    parts.active.touch(recent.tolist())
    # what Kafka may redeliver (not yet committed when the last owner stopped) is in the log and
    # therefore already in the state just rebuilt: remember these partitions' newest event ids
    parts.applied.remember(await loop.run_in_executor(None, lambda: parts.log.recent_event_ids(
        parts.applied.limit, partitions, holdings.key_partitions)))
    # their lists: written by the app's backfill, in batches next to the stream (the first restore
    # queues every user the state or the version just installed knows; later ones the users restored)
    if first:
        parts.backfill_all()
    else:
        parts.backfill.enqueue(list(dict.fromkeys(reversed(events.user_ids.tolist()))))
    return len(events)


def restore(parts: WorkerParts, partitions: set[int] | None = None) -> int:
    """:func:`restore_partitions` outside an event loop (all partitions by default)."""
    wanted = set(range(parts.holdings.n_partitions)) if partitions is None else partitions
    return asyncio.run(restore_partitions(parts, wanted))


def drop_partitions(parts: WorkerParts, partitions: set[int]) -> int:
    """Forget the users of partitions the group took away; returns how many."""
    users = parts.holdings.release(partitions)
    parts.model.state.drop(users)
    parts.active.discard(users)
    return len(users)


async def rebalance(parts: WorkerParts, assigned: set[int]) -> None:
    """Hold exactly ``assigned``: drop the users of partitions lost, restore those of partitions gained
    (Faust's eager rebalance hands out the whole assignment each time; kept partitions cost nothing)."""
    held = parts.holdings.partitions
    lost, gained = held - assigned, assigned - held
    # the backfill writes the lists of these partitions' users only (it also follows the consumer's
    # view, which can lack the topic's partition count for a while after an assignment)
    parts.backfill.ownership.assign(parts.holdings.n_partitions, assigned)
    t0 = time.perf_counter()
    dropped = drop_partitions(parts, lost) if lost else 0
    restored = await restore_partitions(parts, gained) if gained else 0
    if lost or gained:
        log.warning("partitions %s: dropped %d users of %s, restored %d events of %s in %.1fs; %d users held",
                    sorted(assigned), dropped, sorted(lost), restored, sorted(gained), time.perf_counter() - t0,
                    len(parts.model.state))


def evict_inactive(parts: WorkerParts) -> int:
    """Drop the users without an event for ``MUSICREC_STATE_TTL`` days of event time; returns how many."""
    ttl = parts.settings.stream.state_ttl
    if ttl <= 0 or not len(parts.holdings):
        return 0
    users = parts.model.state.history.inactive(parts.holdings.clock - ttl * DAY_S)
    if len(users):
        parts.model.state.drop(users)
        parts.active.discard(users)
        parts.holdings.forget(users)
        parts.counters.evicted += len(users)
    return len(users)


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
    parts.holdings.n_partitions = topic_partitions(cfg, cfg.events_topic)
    print(f"worker {parts.worker_id}: joining group {cfg.app_id}; each partition of {cfg.events_topic} "
          f"({parts.holdings.n_partitions}) it is assigned restores its users from {cfg.log_dir}", file=sys.stderr)
    WorkerApp(parts).run(loglevel)
