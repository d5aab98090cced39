"""Whole fetches for the events agent: what is handed out, what is dropped, what is acked and when."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.worker.fetches import FetchFeed, fetch_feeds, take_fetched


class _Record:
    def __init__(self, offset: int, generation: int = 1, tp: str = "p0") -> None:
        self.tp, self.offset, self.generation_id = tp, offset, generation


class _FlowControl:
    def __init__(self) -> None:
        self.active = True
        self.queues: list[Any] = []

    def is_active(self) -> bool:
        return self.active

    def manage_queue(self, queue: Any) -> None:
        self.queues.append(queue)

    def clear(self) -> None:
        for queue in self.queues:
            queue.clear()


class _Consumer:
    def __init__(self) -> None:
        self.tracked: list[int] = []
        self.acked: list[int] = []

    def track_message(self, record: _Record) -> None:
        self.tracked.append(record.offset)

    def ack(self, record: _Record) -> bool:
        self.acked.append(record.offset)
        return True


class _App:
    """The parts of a Faust app a feed uses."""

    def __init__(self) -> None:
        self.flow_control = _FlowControl()
        self.consumer = _Consumer()
        self.consumer_generation_id = 1
        self.should_stop = False


def _feed(limit: int = 10, highwater: Any = None) -> tuple[_App, FetchFeed]:
    app = _App()
    return app, FetchFeed.install(app, "events", limit, highwater or (lambda tp: None))


def test_install_registers_the_feed_for_the_fetch_loop_and_flow_control() -> None:
    async def main() -> None:
        app, feed = _feed()
        assert fetch_feeds(app) == {"events": feed}
        assert app.flow_control.queues == [feed]

    asyncio.run(main())


def test_a_feed_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError, match="limit"):
        FetchFeed(_App(), 0, lambda tp: None)


def test_records_are_acked_after_their_batch_and_never_when_it_failed() -> None:
    async def main() -> tuple[list[int], list[int], list[int], list[int]]:
        app, feed = _feed()
        for offset in range(5):
            assert feed.put(_Record(offset))
        batches = take_fetched(feed, 0.01, 0.0)
        async for batch in batches:
            assert [r.offset for r in batch] == [0, 1, 2, 3, 4]
            during = list(app.consumer.acked)
            break
        await batches.aclose()  # the loop left the body early: as if it raised
        failed = list(app.consumer.acked)
        for offset in range(5, 8):
            feed.put(_Record(offset))
        async for _batch in take_fetched(feed, 0.01, 0.0):
            app.should_stop = True  # the next turn ends the loop, after this batch's acks
        return during, failed, app.consumer.acked, app.consumer.tracked

    during, failed, acked, tracked = asyncio.run(main())
    assert during == [] and failed == []
    assert acked == [5, 6, 7]
    assert tracked == [0, 1, 2, 3, 4, 5, 6, 7]  # every record handed out is tracked for a rebalance


def test_a_suspended_flow_drops_records_and_a_rebalance_clears_what_waits() -> None:
    async def main() -> None:
        app, feed = _feed()
        feed.put(_Record(0))
        app.flow_control.active = False
        assert feed.put(_Record(1))  # taken off the fetch loop's hands, but dropped
        assert len(feed) == 1 and feed.dropped == 1
        app.flow_control.clear()
        assert len(feed) == 0 and feed.dropped == 2
        app.flow_control.active = True
        feed.put(_Record(0))
        assert [r.offset for r in feed.take()] == [0]

    asyncio.run(main())


def test_records_of_an_older_generation_are_dropped_when_taken_and_after_ready() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        app, feed = _feed()
        feed.put(_Record(0, generation=0))
        feed.put(_Record(1))
        feed.put(_Record(2))

        async def rebalance_meanwhile() -> None:
            if app.consumer_generation_id == 1:  # a rebalance while the batch waits to start
                app.consumer_generation_id = 2
                feed.put(_Record(3, generation=2))

        seen: list[list[int]] = []
        async for batch in take_fetched(feed, 0.01, 0.0, ready=rebalance_meanwhile):
            seen.append([r.offset for r in batch])
            app.should_stop = True
        return seen, app.consumer.acked

    seen, acked = asyncio.run(main())
    assert seen == [[3]] and acked == [3]  # 0 was stale when taken, 1 and 2 once ready


def test_a_full_feed_holds_the_fetch_loop_until_its_batch_is_taken() -> None:
    async def main() -> None:
        _app, feed = _feed(limit=3)
        for offset in range(3):
            assert feed.put(_Record(offset))
        assert feed.full.is_set()
        assert not feed.put(_Record(3))
        waiter = asyncio.get_running_loop().create_task(feed.put_when_room(_Record(3)))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert [r.offset for r in feed.take()] == [0, 1, 2]
        await asyncio.wait_for(waiter, 1.0)
        assert [r.offset for r in feed.take()] == [3]

    asyncio.run(main())


def test_a_feed_that_is_behind_takes_what_waits_in_kafka_in_one_batch() -> None:
    async def sizes(highwater_ahead: int) -> list[int]:
        _app, feed = _feed(limit=1000)
        feed.waiting.highwater = lambda tp: (feed.waiting.next_offset.get(tp, 0) + highwater_ahead
                                             if highwater_ahead >= 0 else 400)

        async def fetches() -> None:
            for offset in range(400):
                feed.put(_Record(offset))
                await asyncio.sleep(0.002)

        task = asyncio.get_running_loop().create_task(fetches())
        out: list[int] = []
        async for batch in take_fetched(feed, 0.02, 2.0):
            out.append(len(batch))
            if sum(out) >= 400:
                break
        task.cancel()
        return out

    assert asyncio.run(sizes(-1))[0] == 400  # Kafka says 400 exist: one batch
    kept_up = asyncio.run(sizes(0))  # nothing beyond what was fetched: one window's worth each
    assert len(kept_up) >= 10 and max(kept_up) < 100
