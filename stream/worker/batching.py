"""Micro-batches from a Faust stream that grow when the worker is behind.

Faust's ``Stream.take_events(max, within)`` waits a fixed ``within`` for each batch. Faust hands
messages to an agent one at a time, and only while the event loop is free, so after a slow batch a
fixed short wait gathers a short batch, whatever is waiting in Kafka: under a backlog the worker
then pays its per-batch costs (a request's signals, one log segment, one Redis round trip) every
~100 events. :func:`take_batches` is ``take_events`` with one change: when, after the usual wait,
Kafka holds at least as many more events of the stream as the batch already has, and at least a
quarter of a full batch (the consumer's highwater against the next offset buffered, per partition),
the worker is behind: it keeps gathering, one more wait at a time, until the batch holds what was
waiting then, while events keep coming (no gap over ``STALL_S``), up to ``max_`` events and
``catchup`` seconds. A worker that keeps up batches exactly as before; a worker that is behind gets
a few large batches instead of many small ones.

The waiting itself (:func:`gather`) is shared with the whole fetches of ``stream.worker.fetches``.

After a batch whose body ran longer than ``within``, the next batch takes the events that came
meanwhile as soon as they are in the buffer, without a fresh ``within``: they have waited a window
already, and another would be added to each one's latency (at 1k events/s a batch runs ~40 ms here).

A batch's events are acked only after the loop body that received it returns, so offsets are
committed only for events already processed. Unlike ``take_events``, a body that raises (or is
cancelled) leaves its batch unacked: those offsets are never committed, and Kafka redelivers the
events to whoever consumes the partition next.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from mode.utils.aiter import aiter
from mode.utils.futures import notify

# how long the stream may go quiet while a batch keeps gathering: longer than a fetch round trip
# (one per ~45 ms here when the embedded broker feeds a backlog, one record batch per partition)
STALL_S = 0.1

# after a batch that ran longer than a window, how long the buffer may stay unchanged before the
# events that came meanwhile count as all in (they move from Faust's queue in microseconds each)
SETTLE_S = 0.002

Highwater = Callable[[Any], "int | None"]


def consumer_highwater(app: Any) -> Highwater:
    """The highwater of a partition as the app's consumer last fetched it (None: unknown, e.g. a
    partition no longer assigned after a rebalance)."""

    def highwater(tp: Any) -> int | None:
        try:
            return app.consumer.highwater(tp)
        except (AssertionError, KeyError, RuntimeError, AttributeError):
            # aiokafka asserts the partition is assigned; Faust raises before its consumer starts
            return None

    return highwater


class Waiting:
    """Next offset buffered per partition, against the consumer's highwater: how many events of the
    stream are in Kafka but not yet in the batch."""

    def __init__(self, highwater: Highwater) -> None:
        self.highwater = highwater
        self.next_offset: dict[Any, int] = {}

    def saw(self, tp: Any, offset: int) -> None:
        self.next_offset[tp] = offset + 1

    def count(self) -> int:
        total = 0
        for tp, nxt in list(self.next_offset.items()):
            high = self.highwater(tp)
            if high is None:
                del self.next_offset[tp]  # revoked: its events will not come here
                continue
            total += max(high - nxt, 0)
        return total


class Gathering(Protocol):
    """What a batch gathers in: the events held so far (``len``), ``full`` set at a full batch, when
    the newest came, and a wait that returns when full, after ``timeout``, or when stopping."""

    full: asyncio.Event
    arrived_at: float

    @property
    def should_stop(self) -> bool: ...

    def __len__(self) -> int: ...

    async def wait(self, timeout: float) -> None: ...


async def _settle(source: Gathering, deadline: float) -> None:
    """Wait until the source stops growing (no event for ``SETTLE_S``), is full, or ``deadline``."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline and not source.should_stop:
        held = len(source)
        await source.wait(min(SETTLE_S, max(deadline - loop.time(), 0.0)))
        if len(source) == held or source.full.is_set():
            return


async def gather(source: Gathering, max_: int, within: float, catchup: float, waiting: Waiting,
                 busy: float) -> None:
    """Wait for one batch in ``source``: ``within`` seconds (or until full; after a body that ran
    ``busy`` >= ``within`` seconds, only until what came meanwhile is in); then, if Kafka holds at
    least as many more events as the source has (and ``max_ // 4``), until it holds those too,
    while they keep coming, up to ``catchup`` seconds more."""
    loop = asyncio.get_running_loop()
    if busy >= within:
        # the events that came while the last batch ran have waited a window already: take
        # them once they are in (the source stops growing), without a fresh window
        await _settle(source, loop.time() + within)
    else:
        await source.wait(within)
    # fewer waiting events than a quarter of a full batch: a worker that keeps up (a batch's worth
    # arrives while it runs) serves them in its next batch rather than wait a fetch or two for them
    behind = max(max_ // 4, 1)
    backlog = waiting.count() if len(source) else 0
    if backlog >= max(len(source), behind):  # behind: catch up
        # what was waiting then, not what keeps arriving: a stream's new events would
        # otherwise hold every catch-up batch open for the whole ``catchup``
        target = min(max_, len(source) + backlog)
        deadline = loop.time() + catchup
        while len(source) < target and loop.time() < min(deadline, source.arrived_at + STALL_S):
            await source.wait(within)
            if source.should_stop:
                break


class _StreamBuffer:
    """A Faust stream's events as ``take_batches``' processor buffers them."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.events: list[Any] = []
        self.full = asyncio.Event()
        self.arrived_at = 0.0

    @property
    def should_stop(self) -> bool:
        return bool(self.stream.should_stop)

    def __len__(self) -> int:
        return len(self.events)

    async def wait(self, timeout: float) -> None:
        # (mode reports a timeout as "stopped" too, so callers ask the stream itself)
        await self.stream.wait_for_stopped(self.full, timeout=timeout)


async def take_batches(stream: Any, max_: int, within: float, catchup: float,
                       highwater: Highwater) -> AsyncIterator[list[Any]]:
    """Batches of at most ``max_`` events of ``stream``, gathered as :func:`gather` says. Events are
    acked after the caller's body for the batch returns."""
    if max_ <= 0 or within <= 0 or catchup < 0:
        raise ValueError("max_ and within must be positive and catchup >= 0")
    held = _StreamBuffer(stream)
    buffer_consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    waiting = Waiting(highwater)
    loop = asyncio.get_running_loop()
    channel_it = aiter(stream.channel)

    async def add_to_buffer(value: Any) -> Any:
        # Faust runs this processor for every message (the stream is drained passively): the
        # same as take_events' own, plus the partition's position
        nonlocal consuming
        try:
            if consuming is not None:
                try:
                    await consuming
                finally:
                    consuming = None
            held.arrived_at = loop.time()
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            held.events.append(event)
            waiting.saw(event.message.tp, event.message.offset)
            if len(held) >= max_:
                held.full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # never more than max_ in one batch
        except CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # pragma: no cover - Faust's own handling in take_events
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked below, after the body
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    busy = 0.0  # how long the last batch's body ran
    while not stream.should_stop:
        await gather(held, max_, within, catchup, waiting, busy)
        busy = 0.0
        if not held.events:
            continue
        consuming = loop.create_future()
        processed = False
        started = loop.time()
        try:
            yield list(held.events)
            processed = True
        finally:
            busy = loop.time() - started
            # take_events acks here whatever happened; a batch whose body raised (or was cancelled)
            # stays unacked, so its offsets are never committed and Kafka redelivers it
            if processed:
                for event in held.events:
                    await stream.ack(event)
            held.events.clear()
            notify(consuming)
            held.full.clear()
            buffer_consumed.set()
