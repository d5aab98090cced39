"""What a worker's batch knows of the events still waiting in Kafka (stream.worker.batching)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from stream.worker.batching import Waiting, consumer_highwater, take_batches


def test_waiting_counts_events_past_the_newest_buffered_offset_per_partition() -> None:
    highwaters = {"p0": 100, "p1": 7}
    waiting = Waiting(highwaters.get)
    assert waiting.count() == 0  # nothing buffered yet: no partition known
    waiting.saw("p0", 49)  # offsets 50..99 are still in Kafka
    waiting.saw("p1", 6)  # caught up: the highwater is the next offset to be written
    assert waiting.count() == 50
    waiting.saw("p0", 89)
    assert waiting.count() == 10
    highwaters["p0"] = 120  # a fetch saw more
    assert waiting.count() == 30


def test_a_partition_whose_highwater_is_gone_stops_counting() -> None:
    highwaters: dict[str, int] = {"p0": 10, "p1": 50}
    waiting = Waiting(highwaters.get)
    waiting.saw("p0", 4)
    waiting.saw("p1", 9)
    del highwaters["p1"]  # revoked in a rebalance: its events go to another worker
    assert waiting.count() == 5
    assert waiting.next_offset == {"p0": 5}


def test_a_highwater_ahead_of_nothing_never_counts_negative() -> None:
    waiting = Waiting(lambda tp: 3)
    waiting.saw("p0", 9)  # a stale highwater from an older fetch
    assert waiting.count() == 0


class _Consumer:
    def highwater(self, tp: str) -> int:
        if tp != "mine":
            raise AssertionError("Partition is not assigned")  # what aiokafka does
        return 42


class _App:
    consumer = _Consumer()


def test_consumer_highwater_is_none_for_partitions_not_assigned() -> None:
    highwater = consumer_highwater(_App())
    assert highwater("mine") == 42
    assert highwater("theirs") is None
    assert consumer_highwater(object())("mine") is None  # no consumer yet


@pytest.mark.parametrize("args", [(0, 0.02, 0.5), (10, 0.0, 0.5), (10, 0.02, -1.0)])
def test_take_batches_refuses_bad_bounds(args: tuple[int, float, float]) -> None:
    async def first() -> None:
        async for _ in take_batches(object(), *args, highwater=lambda tp: None):
            pass

    with pytest.raises(ValueError, match="max_ and within"):
        asyncio.run(first())


class _Message:
    def __init__(self, tp: str, offset: int) -> None:
        self.tp, self.offset = tp, offset


class _Event:
    def __init__(self, tp: str, offset: int) -> None:
        self.message = _Message(tp, offset)


class _Stream:
    """The part of a Faust stream take_batches uses: a passive drainer that runs the processors on
    each event as it arrives (here from a queue the test fills), waits, and acks."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Event] = asyncio.Queue()
        self.channel = self
        self.processors: list[Any] = []
        self.current_event: _Event | None = None
        self.acked: list[int] = []
        self.should_stop = False
        self.enable_acks = True
        self.log = logging.getLogger("test")
        self._drainer: asyncio.Task[None] | None = None

    def __aiter__(self) -> _Stream:
        return self

    def add_processor(self, fn: Any) -> None:
        self.processors.append(fn)

    def _enable_passive(self, channel: Any) -> None:
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            event = await self.queue.get()
            self.current_event = event
            for fn in self.processors:
                await fn(event)

    async def wait(self, event: asyncio.Event, timeout: float | None = None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        await self.wait(event, timeout)
        return True  # as mode does on a timeout

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.message.offset)

    async def crash(self, exc: BaseException) -> None:  # pragma: no cover - never reached here
        raise exc


def _feed(stream: _Stream, offsets: range, every: float = 0.0) -> asyncio.Task[None]:
    async def feed() -> None:
        for offset in offsets:
            stream.queue.put_nowait(_Event("p0", offset))
            if every:
                await asyncio.sleep(every)

    return asyncio.get_running_loop().create_task(feed())


def _batch_sizes(events: int, until: int, highwater: Callable[[_Stream], Any]) -> list[int]:
    """Sizes of the batches (max 1,000, 20-ms waits, 2-s catch-up) that take ``until`` of ``events``
    arriving 2 ms apart, with Kafka's highwater given by ``highwater(stream)``."""

    async def run() -> list[int]:
        stream = _Stream()
        feeder = _feed(stream, range(events), every=0.002)
        sizes: list[int] = []
        async for batch in take_batches(stream, 1000, 0.02, 2.0, highwater=highwater(stream)):
            sizes.append(len(batch))
            if sum(sizes) >= until:
                break
        feeder.cancel()
        return sizes

    return asyncio.run(run())


def _delivered_plus(ahead: int) -> Callable[[_Stream], Any]:
    """Kafka holds ``ahead`` events beyond the newest one delivered."""
    return lambda stream: (lambda tp: stream.current_event.message.offset + 1 + ahead)


def test_a_worker_that_is_behind_takes_what_waits_in_kafka_in_one_batch() -> None:
    # 400 events arrive 2 ms apart: one 20-ms wait brings ~10, while Kafka says 400 exist
    assert _batch_sizes(400, 400, lambda stream: (lambda tp: 400))[0] == 400


def test_a_worker_that_keeps_up_is_not_made_to_wait() -> None:
    # Kafka holds nothing beyond what was fetched: batches are what one 20-ms wait brings
    sizes = _batch_sizes(400, 400, _delivered_plus(0))
    assert len(sizes) >= 10 and max(sizes) < 100


def test_events_are_acked_after_their_batch_and_never_when_it_failed() -> None:
    async def run() -> tuple[list[int], list[int]]:
        stream = _Stream()
        _feed(stream, range(5))
        acked_during: list[int] = []
        batches = take_batches(stream, 5, 0.02, 0.0, highwater=lambda tp: None)
        async for batch in batches:
            acked_during = list(stream.acked)  # nothing is acked while its body runs
            assert [e.message.offset for e in batch] == [0, 1, 2, 3, 4]
            break
        await batches.aclose()  # the loop left the body early: as if it raised
        return acked_during, stream.acked

    during, after = asyncio.run(run())
    assert during == [] and after == []

    async def ok() -> list[int]:
        stream = _Stream()
        _feed(stream, range(5))
        async for _ in take_batches(stream, 5, 0.02, 0.0, highwater=lambda tp: None):
            stream.should_stop = True  # the next turn ends the loop, after this batch's acks
        return stream.acked

    assert asyncio.run(ok()) == [0, 1, 2, 3, 4]


def test_a_catch_up_batch_takes_what_was_waiting_not_what_keeps_arriving() -> None:
    # Kafka always holds 300 more than were delivered: a stream that keeps arriving while the
    # worker catches up must not hold the batch open until ``catchup`` (or until it is full)
    size = _batch_sizes(3000, 1, _delivered_plus(300))[0]
    assert 300 <= size <= 400, size


def test_after_a_batch_longer_than_the_window_the_next_one_does_not_wait_a_window_more() -> None:
    # events every 5 ms; each body runs 0.25 s, longer than the 0.2-s window: what came meanwhile
    # is taken once it is in, not after another 0.2 s (as take_events would)
    async def run() -> list[float]:
        stream = _Stream()
        feeder = _feed(stream, range(10_000), every=0.005)
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        ended = None
        async for batch in take_batches(stream, 10_000, 0.2, 0.0, highwater=lambda tp: None):
            assert batch
            if ended is not None:
                gaps.append(loop.time() - ended)
            if len(gaps) == 3:
                break
            await asyncio.sleep(0.25)
            ended = loop.time()
        feeder.cancel()
        return gaps

    gaps = asyncio.run(run())
    assert max(gaps) < 0.1, gaps
