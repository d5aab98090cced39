"""Whole fetches for the events agent, without Faust's per-message path.

Faust hands every fetched record to its conductor, which decodes it into an event and puts it in
the agent's channel; the agent's stream then takes it out, runs its processors, sets the current
event, calls sensors and acks it: ~70 µs per event here, a third of a worker's time in a backlog,
for records the worker parses as a batch anyway.

A :class:`FetchFeed` is a list the worker's fetch loop (``stream.worker.delivery``) appends the
records of one topic to as they are fetched, and :func:`take_fetched` takes them from it in batches
gathered as ``take_batches`` gathers them (``batching.gather``). Faust still owns the consumer
group, its rebalances, the fetches, flow control, offsets and commits, and the agent itself:

* a record fetched while the flow is suspended (a rebalance) is dropped, as Faust's stream skips
  it, and so is one of an older consumer generation; flow control clears the feed with the agent
  queues it clears. Dropped records are never acked, so Kafka delivers them again;
* records taken into a batch are tracked as Faust's stream tracks events (a rebalance waits for
  them) and acked through the consumer after the body returns; never when it raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from stream.worker.batching import Highwater, Waiting, gather

_FEEDS = "musicrec_fetch_feeds"  # the app's attribute holding its feeds, by topic


def fetch_feeds(app: Any) -> dict[str, FetchFeed]:
    """The app's feeds by topic name (made empty on first use): the fetch loop reads it."""
    feeds: dict[str, FetchFeed] | None = getattr(app, _FEEDS, None)
    if feeds is None:
        feeds = {}
        setattr(app, _FEEDS, feeds)
    return feeds


class FetchFeed:
    """Fetched records of one topic waiting for the agent's next batch: at most ``limit``."""

    def __init__(self, app: Any, limit: int, highwater: Highwater) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.app = app
        self.limit = limit
        self.messages: list[Any] = []
        self.full = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.arrived_at = 0.0
        self.waiting = Waiting(highwater)
        self.dropped = 0  # records fetched while the flow was suspended, or of an older generation

    @classmethod
    def install(cls, app: Any, topic: str, limit: int, highwater: Highwater) -> FetchFeed:
        """A feed for ``topic``, which the fetch loop fills from now on, cleared by the app's flow control."""
        feed = cls(app, limit, highwater)
        fetch_feeds(app)[topic] = feed
        app.flow_control.manage_queue(feed)
        return feed

    @property
    def should_stop(self) -> bool:
        return bool(self.app.should_stop)

    def __len__(self) -> int:
        return len(self.messages)

    def put(self, message: Any) -> bool:
        """Append a fetched record; False (and nothing done) when the feed is full."""
        if len(self.messages) >= self.limit:
            return False
        if not self.app.flow_control.is_active():
            self.dropped += 1
            return True
        self.messages.append(message)
        self.arrived_at = asyncio.get_running_loop().time()
        self.waiting.saw(message.tp, message.offset)
        if len(self.messages) >= self.limit:
            self.full.set()
            self.room.clear()
        return True

    async def put_when_room(self, message: Any) -> None:
        """Append once the agent took the batch that filled the feed."""
        while not self.put(message):
            await self.room.wait()

    def clear(self) -> None:
        """Drop what waits (flow control, in a rebalance): none of it was acked."""
        self.dropped += len(self.messages)
        self.messages = []
        self.waiting.next_offset.clear()
        self.full.clear()
        self.room.set()

    async def wait(self, timeout: float) -> None:
        if not self.full.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.full.wait(), timeout)

    def current(self, messages: list[Any]) -> list[Any]:
        """``messages`` without those fetched before the consumer's latest rebalance."""
        generation = self.app.consumer_generation_id
        if all(m.generation_id == generation for m in messages):
            return messages
        kept = [m for m in messages if m.generation_id == generation]
        self.dropped += len(messages) - len(kept)
        return kept

    def take(self) -> list[Any]:
        messages, self.messages = self.messages, []
        self.full.clear()
        self.room.set()
        return self.current(messages)


async def take_fetched(feed: FetchFeed, within: float, catchup: float,
                       ready: Callable[[], Awaitable[Any]] | None = None) -> AsyncIterator[list[Any]]:
    """Batches of at most ``feed.limit`` records, gathered as ``batching.gather`` says; each is
    acked after the caller's body for it returns, never when the body raised. ``ready`` (if given)
    is awaited before each batch is handed out; records a rebalance made stale meanwhile are dropped."""
    if within <= 0 or catchup < 0:
        raise ValueError("within must be positive and catchup >= 0")
    loop = asyncio.get_running_loop()
    busy = 0.0
    while not feed.should_stop:
        await gather(feed, feed.limit, within, catchup, feed.waiting, busy)
        busy = 0.0
        messages = feed.take()
        if messages and ready is not None:
            await ready()
            messages = feed.current(messages)
        if not messages:
            continue
        consumer = feed.app.consumer
        for message in messages:  # a rebalance waits for these, as for a stream's events
            consumer.track_message(message)
        processed = False
        started = loop.time()
        try:
            yield messages
            processed = True
        finally:
            busy = loop.time() - started
            if processed:
                for message in messages:
                    consumer.ack(message)
