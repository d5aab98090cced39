"""The worker's Faust app: named agents and timers, each a thin shell around the worker's parts.

Batches come from ``fetches.take_fetched`` (whole fetches, no per-message Faust path) or, under a
Faust release the worker's fetch loop was not written for, ``batching.take_batches`` (Faust's
``take_events``); both grow while the worker is behind, and both ack a batch only after the loop
body returns, so offsets are committed only for events already in the log, in Redis and (if
refused) in the dead-letter topic. A crash before that means redelivery, and the worker learns a
redelivered event once (``dedup``).

Batches run on the event loop itself, not in a helper thread: a second thread gains little
(Faust's per-message work holds the GIL) and costs a lot, since every numpy call that drops the GIL
then waits up to a switch interval to get it back (batches went from ~15 ms to ~150 ms at 3k
events/s, see benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import faust

from offline.compaction import compact_own, purge_forgotten
from stream.catalog_feed import follow_catalog
from stream.errors import ServiceUnavailable
from stream.events import Song
from stream.kafka_config import faust_app_options, use_fetch_max_wait
from stream.worker.batching import consumer_highwater, take_batches
from stream.worker.dead_letters import DeadLetterSender
from stream.worker.delivery import use_inline_delivery
from stream.worker.fetches import FetchFeed, take_fetched
from stream.worker.memory import refreeze_heap, trim_heap
from stream.worker.messages import Message
from stream.worker.parts import WorkerParts
from stream.worker.start import evict_inactive, rebalance

log = logging.getLogger("musicrec.worker")

REDIS_RETRY_MAX_S = 5.0
CATALOG_BATCH = 500
COMPACT_EVERY_S = 30.0
STATS_EVERY_S = 2.0
EVICT_EVERY_S = 60.0
# a full collection (~0.1 s) this often, instead of one every few seconds (stream/worker/memory.py)
REFREEZE_EVERY_S = 300.0
REMOVALS_EVERY_S = 1.0  # hidden songs and forgotten users take effect within this
BACKFILL_PAUSE_S = 0.005  # at least, between two backfill batches
BACKFILL_IDLE_S = 0.2


def _messages(events: list[Any]) -> list[Message]:
    return _records([e.message for e in events])


def _records(records: list[Any]) -> list[Message]:
    return [Message(r.key, r.value, r.topic, r.partition, r.offset, r.timestamp) for r in records]


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
        inline = use_inline_delivery()
        self.app = app = faust.App(cfg.app_id, **faust_app_options(parts.settings))
        events = app.topic(cfg.events_topic, key_type=bytes, value_type=bytes, partitions=cfg.partitions)
        # whole fetches to the events agent, where the fetch loop is the worker's own
        self.feed = (FetchFeed.install(app, cfg.events_topic, cfg.batch_size, consumer_highwater(app))
                     if inline else None)
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
        app.timer(REMOVALS_EVERY_S, name="musicrec.removals")(self.follow_removals)
        app.task(self.backfill_lists)
        self._log_lock = asyncio.Lock()  # merging and purging this worker's segments, one at a time
        app.timer(STATS_EVERY_S, name="musicrec.stats")(self.publish_stats)
        app.timer(EVICT_EVERY_S, name="musicrec.eviction")(self.evict_inactive)
        app.timer(REFREEZE_EVERY_S, name="musicrec.collector")(self.refreeze_heap)
        app.on_partitions_assigned.connect(self.on_partitions_assigned)  # type: ignore[arg-type]  # mode types a union of callables

    async def on_partitions_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Restore the users of partitions gained, drop those of partitions lost. Faust awaits this
        with the new partitions paused, so no event of theirs is processed before their history."""
        assigned: set[Any] = args[0] if args else kwargs.get("assigned", set())
        topic = self.parts.settings.stream.events_topic
        self.settled.clear()
        try:
            await rebalance(self.parts, {tp.partition for tp in assigned if tp.topic == topic})
            await self.refreeze_heap()  # the restored state is long-lived: out of the collector's way
        finally:
            self.settled.set()

    async def refreeze_heap(self) -> None:
        frozen = refreeze_heap()
        log.debug("collected; %d objects frozen", frozen)

    async def evict_inactive(self) -> None:
        evicted = evict_inactive(self.parts)
        if evicted:
            log.info("evicted %d users inactive for %g days", evicted, self.parts.settings.stream.state_ttl)

    async def _dead(self, dead: list[Any]) -> None:
        if dead:
            await self.dead_letters.send(dead)
            self.parts.counters.refused += len(dead)

    async def consume_events(self, stream: faust.StreamT) -> None:
        """The events agent: with a fetch feed, its stream stays empty (the fetch loop hands the
        records to the feed) and batches come from the feed."""
        cfg = self.parts.settings.stream
        if self.feed is not None:
            async for records in take_fetched(self.feed, cfg.batch_within, cfg.batch_catchup, self.settled.wait):
                await self._process(_records(records))
        else:
            async for events in take_batches(stream, cfg.batch_size, cfg.batch_within, cfg.batch_catchup,
                                             consumer_highwater(self.app)):
                await self.settled.wait()
                await self._process(_messages(events))

    async def _process(self, messages: list[Message]) -> None:
        if messages:
            await self._dead(await with_redis_retry("processing a batch", self.parts.processor.process, messages))

    async def store_catalog(self, stream: faust.StreamT) -> None:
        """Catalog events, stored once per consumer group and dead-lettered once; indexing them is
        every worker's job (:meth:`index_catalog`)."""
        async for events in stream.take_events(CATALOG_BATCH, within=0.05):  # type: ignore[attr-defined]
            await self._dead(self.parts.catalog.take(_messages(events), self.parts.served(), index=False,
                                                     on_visibility=self._record_visibility))

    def _record_visibility(self, songs: list[Song]) -> None:
        """Hide requests from the topic, kept in the data directory (the topic's retention ends)."""
        self.parts.removals.hidden.record_requests([(s.song_id, bool(s.hidden), s.ts) for s in songs])

    async def index_catalog(self) -> None:
        """Every catalog event, read by every worker (a broadcast): each indexes every new song."""
        await follow_catalog(self.parts.settings.stream, self._index_songs, CATALOG_BATCH)

    async def _index_songs(self, messages: list[Message]) -> None:
        served = self.parts.served()
        visibility: list[Song] = []
        self.parts.catalog.take(messages, served, store=False, on_visibility=visibility.extend)  # refusals: the agent's
        if visibility:
            await with_redis_retry("hiding songs", self.parts.removals.take_visibility, visibility, served)

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
                parts.backfill_all()

    async def compact_log(self) -> None:
        # merging only touches this worker's finished segments, so it can run next to batches
        async with self._log_lock:
            merged = await asyncio.get_running_loop().run_in_executor(None, compact_own, self.parts.log,
                                                                      self.parts.worker_id)
        if merged:
            log.info("merged %d log segments", merged)

    async def follow_removals(self) -> None:
        """Hidden songs and forgotten users recorded in the data directory (by the CLI, the API or
        the catalog agent): applied here, between batches; this worker's own segments are then
        purged of the forgotten users aside (what it appended before it knew)."""
        parts = self.parts
        forgotten = []
        try:
            parts.removals.poll_hidden(parts.served())
            forgotten = parts.removals.poll_forgotten()
            parts.removals.flush()
        except ServiceUnavailable as exc:  # applied in this worker; Redis gets its part at a later poll
            log.warning("removals wait for Redis: %s", exc)
        if forgotten:
            async with self._log_lock:
                purged = await asyncio.get_running_loop().run_in_executor(None, purge_forgotten, parts.log,
                                                                          parts.worker_id)
            log.warning("forgot %d users; purged %d more of their events from this worker's segments",
                        len(forgotten), purged.events)

    async def backfill_lists(self) -> None:
        """Lists for every known user, a batch at a time between batches of events, once Kafka has
        told this worker which partitions (users) are its own."""
        parts = self.parts
        parts.backfill_all()
        while True:
            if len(parts.backfill) and self.settled.is_set() and self._follow_assignment():
                started = time.perf_counter()
                await with_redis_retry("writing lists", parts.backfill.step)
                # as long again for the events: the agent's path from a fetch to a batch takes several
                # turns of the loop, which a bare yield between two backfill batches would not give it
                await asyncio.sleep(max(time.perf_counter() - started, BACKFILL_PAUSE_S))
            else:
                await asyncio.sleep(BACKFILL_IDLE_S)

    def _follow_assignment(self) -> bool:
        topic = self.parts.settings.stream.events_topic
        try:
            consumer = self.app.consumer
            partitions = consumer.topic_partitions(topic)
            assigned = [tp.partition for tp in consumer.assignment() if tp.topic == topic]
        except Exception:  # the consumer is not started yet: there is no assignment to follow
            return False
        if partitions:
            self.parts.backfill.ownership.assign(partitions, assigned)
        return self.parts.backfill.ownership.known

    async def publish_stats(self) -> None:
        trim_heap()  # before the RSS it reports: what is resident, not what was freed
        if self.feed is not None:
            self.parts.counters.records_refetched = self.feed.dropped
        try:
            self.parts.publish_stats()
        except ServiceUnavailable as exc:
            log.warning("cannot publish stats: %s", exc)

    def run(self, loglevel: str = "warning") -> None:
        """Run until SIGINT/SIGTERM."""
        faust.Worker(self.app, loglevel=loglevel, quiet=True).execute_from_commandline()
