"""The song catalog as a broadcast: every worker reads every partition of the songs topic.

The events topic is split between workers by the consumer group, but each worker holds a full
replica of the song index, so each must see every new song. This reader has no consumer group and
commits nothing: a (re)started worker reads the topic from the beginning, which is cheap because
indexing skips the songs its model already has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream.kafka_config import aiokafka_options
from stream.settings import StreamConfig
from stream.worker.messages import Message

log = logging.getLogger("musicrec.catalog")

RETRY_MAX_S = 10.0
# a new song may take this long to reach the index; the events' 10 ms fetch wait would cost an idle
# worker ~100 empty fetches a second here for nothing
CATALOG_FETCH_WAIT_MS = 250


async def follow_catalog(cfg: StreamConfig, handle: Callable[[list[Message]], Awaitable[None]],
                         batch: int = 500) -> None:
    """Hand every record of the songs topic, in batches, to ``handle``, until cancelled.

    Broker trouble is logged and retried (from the beginning: indexing is idempotent)."""
    delay = 0.5
    while True:
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=CATALOG_FETCH_WAIT_MS,
                                    **aiokafka_options(cfg))
        try:
            await consumer.start()
            partitions = sorted(await partitions_of(consumer, cfg.songs_topic))
            consumer.assign([TopicPartition(cfg.songs_topic, p) for p in partitions])
            await consumer.seek_to_beginning()
            log.info("following the catalog %s (%d partitions) as a broadcast", cfg.songs_topic, len(partitions))
            delay = 0.5
            while True:
                records = await consumer.getmany(timeout_ms=500, max_records=batch)
                messages = [Message(r.key, r.value, r.topic, r.partition, r.offset, r.timestamp / 1000)
                            for rs in records.values() for r in rs]
                if messages:
                    await handle(messages)
        except KafkaError as exc:
            log.warning("catalog reader: %s; retrying in %.1fs", exc, delay)
        finally:
            await consumer.stop()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0) -> set[int]:
    """The partition ids of ``topic`` as a started aiokafka consumer sees them."""
    # metadata for a topic another process has just created can take a moment to appear
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await consumer.topics()  # refreshes the cluster metadata
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaError(f"topic {topic!r} has no partitions after {timeout:.0f}s")
        await asyncio.sleep(0.5)
