"""What a worker's batch knows of the events still waiting in Kafka (stream.worker.batching)."""

from __future__ import annotations

import asyncio

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
