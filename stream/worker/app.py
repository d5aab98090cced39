"""The worker's Faust app: named agents and timers, each a thin shell around the worker's parts.

Faust's ``take_events`` acks a batch only after the loop body returns, so offsets are committed
only for events already in the log, in Redis and (if refused) in the dead-letter topic. A crash
before that means redelivery, and the worker learns a redelivered event once (``dedup``).

Batches run on the event loop itself, not in a helper thread: a second thread gains little
(Faust's per-message work holds the GIL) and costs a lot, since every numpy call that drops the GIL
then waits up to a switch interval to get it back (batches went from ~15 ms to ~150 ms at 3k
events/s, see benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust

from offline.compaction import compact_own
from stream.catalog_feed import follow_catalog
from stream.errors import ServiceUnavailable
from stream.kafka_config import faust_app_options, use_fetch_max_wait
from stream.worker.dead_letters import DeadLetterSender
from stream.worker.messages import Message
from stream.worker.parts import WorkerParts
from stream.worker.start import evict_inactive, rebalance

log = logging.getLogger("musicrec.worker")

REDIS_RETRY_MAX_S = 5.0
CATALOG_BATCH = 500
COMPACT_EVERY_S = 30.0
STATS_EVERY_S = 2.0
EVICT_EVERY_S = 60.0


def _messages(events: list[Any]) -> list[Message]:
    return [Message(e.message.key, e.message.value, e.message.topic, e.message.partition, e.message.offset,
                    e.message.timestamp) for e in events]


async def with_redis_retry(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Redis down: keep retrying instead of acking; consumption pauses and nothing is committed."""
    delay = 0.2
    while True:
        try:
            return fn(*args)
        except ServiceUnavailable as exc:
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_MAX_S)


class WorkerApp:
    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        cfg = parts.settings.stream
        use_fetch_max_wait(cfg.fetch_max_wait)
        self.app = app = faust.App(cfg.app_id, **faust_app_options(parts.settings))
        events = app.topic(cfg.events_topic, key_type=bytes, value_type=bytes, partitions=cfg.partitions)
        songs = app.topic(cfg.songs_topic, key_type=bytes, value_type=bytes)
        # set while the state holds exactly the assigned partitions' users: Faust may resume fetching
        # a gained partition before the assignment callback (its restore) returns, and an event
        # processed mid-restore would be learnt before its history, and once more if redelivered
        self.settled = asyncio.Event()
        self.dead_letters = DeadLetterSender(app.topic(cfg.dlq_topic, key_type=bytes, value_type=bytes))
        app.agent(events, name="musicrec.events")(self.consume_events)
        app.agent(songs, name="musicrec.catalog")(self.store_catalog)
        app.task(self.index_catalog)
        app.timer(cfg.model_poll, name="musicrec.versions")(self.follow_versions)
        app.timer(COMPACT_EVERY_S, name="musicrec.compaction")(self.compact_log)
        app.timer(STATS_EVERY_S, name="musicrec.stats")(self.publish_stats)
        app.timer(EVICT_EVERY_S, name="musicrec.eviction")(self.evict_inactive)
        app.on_partitions_assigned.connect(self.on_partitions_assigned)  # type: ignore[arg-type]  # mode types a union of callables

    async def on_partitions_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Restore the users of partitions gained, drop those of partitions lost. Faust awaits this
        with the new partitions paused, so no event of theirs is processed before their history."""
        assigned: set[Any] = args[0] if args else kwargs.get("assigned", set())
        topic = self.parts.settings.stream.events_topic
        self.settled.clear()
        try:
            await rebalance(self.parts, {tp.partition for tp in assigned if tp.topic == topic})
        finally:
            self.settled.set()

    async def evict_inactive(self) -> None:
        evicted = evict_inactive(self.parts)
        if evicted:
            log.info("evicted %d users inactive for %g days", evicted, self.parts.settings.stream.state_ttl)

    async def _dead(self, dead: list[Any]) -> None:
        if dead:
            await self.dead_letters.send(dead)
            self.parts.counters.refused += len(dead)

    async def consume_events(self, stream: faust.StreamT) -> None:
        cfg = self.parts.settings.stream
        async for events in stream.take_events(cfg.batch_size, within=cfg.batch_within):  # type: ignore[attr-defined]
            await self.settled.wait()
            await self._dead(await with_redis_retry("processing a batch", self.parts.processor.process,
                                                    _messages(events)))

    async def store_catalog(self, stream: faust.StreamT) -> None:
        """Catalog events, stored once per consumer group and dead-lettered once; indexing them is
        every worker's job (:meth:`index_catalog`)."""
        async for events in stream.take_events(CATALOG_BATCH, within=0.05):  # type: ignore[attr-defined]
            await self._dead(self.parts.catalog.take(_messages(events), self.parts.served(), index=False))

    async def index_catalog(self) -> None:
        """Every catalog event, read by every worker (a broadcast): each indexes every new song."""
        await follow_catalog(self.parts.settings.stream, self._index_songs, CATALOG_BATCH)

    async def _index_songs(self, messages: list[Message]) -> None:
        self.parts.catalog.take(messages, self.parts.served(), store=False)  # refusals are the agent's to report

    async def follow_versions(self) -> None:
        """The published version and the A/B test: loaded and checked in another thread, next to
        batches; the swap itself (one reference under a lock) runs on the loop, between two batches."""
        parts, loop = self.parts, asyncio.get_running_loop()
        try:
            version, test = parts.registry.published(), parts.wanted_test()
        except ServiceUnavailable as exc:
            log.warning("cannot check for a new model: %s", exc)
            return
        if test is None:
            parts.ab.stop()
        elif parts.ab.wanted(test):
            treatment = await loop.run_in_executor(None, parts.ab.prepare, test)
            if treatment is not None:
                parts.start_test(test, treatment)
        if parts.versions.wanted(version):
            candidate = await loop.run_in_executor(None, parts.versions.prepare, version)
            if candidate is not None and parts.install(candidate):
                await with_redis_retry("refreshing lists after a swap", parts.active.refresh, parts.lists)

    async def compact_log(self) -> None:
        # merging only touches this worker's finished segments, so it can run next to batches
        merged = await asyncio.get_running_loop().run_in_executor(None, compact_own, self.parts.log,
                                                                  self.parts.worker_id)
        if merged:
            log.info("merged %d log segments", merged)

    async def publish_stats(self) -> None:
        try:
            self.parts.publish_stats()
        except ServiceUnavailable as exc:
            log.warning("cannot publish stats: %s", exc)

    def run(self, loglevel: str = "warning") -> None:
        """Run until SIGINT/SIGTERM."""
        faust.Worker(self.app, loglevel=loglevel, quiet=True).execute_from_commandline()
