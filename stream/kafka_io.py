"""kafka-python at the edge: topic creation, a validating producer, an assign() reader.

kafka-python is used for producing and for plain reads with ``assign()`` (its *group* consumer hangs
against Tansu); group consumption is Faust's job (``stream.worker``). Client settings come from
``stream.kafka_config``; library exceptions become ``ServiceUnavailable`` here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from online_models.batch import EventBatch
from stream.errors import ServiceUnavailable
from stream.events import Song, encode_batch, encode_song
from stream.kafka_config import bootstrap_timeout, client_config
from stream.settings import StreamConfig

log = logging.getLogger("musicrec.kafka")

# Connecting at start-up: kafka-python waits up to 30 s per bootstrap by default, so six attempts
# took minutes before a worker pointed at a dead broker said so. Candidates for settings.
CONNECT_ATTEMPTS = 4
CONNECT_FIRST_DELAY_S = 0.5
CONNECT_TIMEOUT_S = 3.0


def with_retries(what: str, fn: Any, attempts: int = CONNECT_ATTEMPTS, first_delay: float = CONNECT_FIRST_DELAY_S
                 ) -> Any:
    """Call ``fn`` with exponential backoff while the broker is unreachable."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (KafkaError, OSError) as exc:
            if attempt == attempts:
                raise ServiceUnavailable(f"{what}: Kafka unreachable after {attempts} attempts ({exc})") from exc
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")  # pragma: no cover


def wanted_topics(cfg: StreamConfig) -> list[NewTopic]:
    """The three topics as this tool creates them: replication and ``min.insync.replicas`` from the
    settings; the catalog compacted, so its latest message per song is kept forever."""
    durable = {"min.insync.replicas": str(cfg.min_insync_replicas)}
    rf = cfg.replication_factor
    return [NewTopic(cfg.events_topic, cfg.partitions, rf, topic_configs=dict(durable)),
            NewTopic(cfg.songs_topic, 1, rf, topic_configs={**durable, "cleanup.policy": "compact"}),
            NewTopic(cfg.dlq_topic, 1, rf, topic_configs=dict(durable))]


def create_missing(admin: Any, wanted: list[NewTopic]) -> list[str]:
    """Create the topics of ``wanted`` that do not exist; returns their names. A broker that refuses a
    topic's configs (the embedded Tansu stores none of them; an old broker may not know one) gets
    the topic without them, and a warning saying which configs are missing where."""
    existing = set(admin.list_topics())
    missing = [t for t in wanted if t.name not in existing]
    for topic in missing:
        try:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics([topic])
        except KafkaError as exc:
            if not topic.topic_configs:
                raise
            log.warning("the broker refused topic %s with configs %s (%s); creating it without them: set them "
                        "on the broker or the topic yourself", topic.name, topic.topic_configs, exc)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic.name, topic.num_partitions, topic.replication_factor)])
    return [t.name for t in missing]


def ensure_topics(cfg: StreamConfig, attempts: int = CONNECT_ATTEMPTS, first_delay: float = CONNECT_FIRST_DELAY_S,
                  connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Create the events, catalog and dead-letter topics if they do not exist (idempotent; existing
    topics keep their configuration, see :func:`wanted_topics`).

    This is the first thing ``musicrec worker`` and ``musicrec replay`` do, so an unreachable broker
    surfaces here: ``attempts`` tries of at most ``connect_timeout`` s each, with backoff from
    ``first_delay`` s in between (about 15 s in all with the defaults), then ``ServiceUnavailable``."""
    wanted = wanted_topics(cfg)

    def create() -> None:
        admin = KafkaAdminClient(**client_config(cfg), request_timeout_ms=10000,
                                 **bootstrap_timeout(KafkaAdminClient, connect_timeout))
        try:
            create_missing(admin, wanted)
        finally:
            admin.close()

    with_retries("creating topics", create, attempts, first_delay)


def topic_partitions(cfg: StreamConfig, topic: str, attempts: int = CONNECT_ATTEMPTS) -> int:
    """How many partitions ``topic`` has (the modulus of the producers' partitioner)."""
    def count() -> int:
        consumer = KafkaConsumer(**client_config(cfg), enable_auto_commit=False,
                                 **bootstrap_timeout(KafkaConsumer, CONNECT_TIMEOUT_S))
        try:
            found = consumer.partitions_for_topic(topic)
        finally:
            consumer.close()
        if not found:
            raise ServiceUnavailable(f"topic {topic} has no partitions (does it exist?)")
        return len(found)

    return int(with_retries(f"reading the partitions of {topic}", count, attempts))


class EventProducer:
    """Validating producer of listening and catalog events (kafka-python): acks=all and idempotent,
    so an acknowledged event is on every in-sync replica, and a retried send is written once. Keys
    go to partitions by murmur2, the Java client's partitioner (see the README for other clients)."""

    def __init__(self, cfg: StreamConfig, linger_ms: int = 5, attempts: int = CONNECT_ATTEMPTS,
                 max_block_ms: int = 60_000) -> None:
        self.cfg = cfg
        self._producer: KafkaProducer = with_retries("connecting the producer", lambda: KafkaProducer(
            **client_config(cfg), linger_ms=linger_ms, batch_size=1 << 16, acks="all", enable_idempotence=True,
            max_block_ms=max_block_ms), attempts)

    def send_events(self, batch: EventBatch, topic: str | None = None) -> int:
        """Validate and send every event of ``batch`` (key = user_id); returns how many were sent."""
        send = self._producer.send
        target = topic or self.cfg.events_topic
        n = 0
        for key, value in encode_batch(batch):
            send(target, key=key, value=value)
            n += 1
        return n

    def send_raw(self, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None,
                 topic: str | None = None) -> None:
        """Send bytes as they are (no validation): for tests and tools that exercise the DLQ."""
        keys = keys if keys is not None else iter(lambda: None, 0)
        for key, value in zip(keys, values, strict=False):
            self._producer.send(topic or self.cfg.events_topic, key=key, value=value)

    def send_acknowledged(self, messages: list[tuple[bytes, bytes]], timeout: float = 10.0) -> None:
        """Send (key, value) pairs to the events topic as they are and wait until the broker has
        acknowledged every one; ServiceUnavailable names how many were not."""
        try:
            futures = [self._producer.send(self.cfg.events_topic, key=k, value=v) for k, v in messages]
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise ServiceUnavailable(f"Kafka did not take the events ({exc})") from exc
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            why = failed[0].exception if failed[0].is_done else "no acknowledgement in time"
            raise ServiceUnavailable(f"Kafka did not acknowledge {len(failed)} of {len(messages)} events ({why})")

    def send_songs(self, songs: Iterable[Song]) -> int:
        n = 0
        for song in songs:
            self._producer.send(self.cfg.songs_topic, key=song.song_id.encode("utf-8"), value=encode_song(song))
            n += 1
        return n

    def flush(self, timeout: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise ServiceUnavailable(f"Kafka did not acknowledge produced events ({exc})") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def read_topic(cfg: StreamConfig, topic: str, timeout: float = 5.0, max_records: int | None = None
               ) -> list[Record]:
    """Every record currently in ``topic`` (all partitions, from the beginning), read with assign()."""
    consumer = with_retries("connecting a reader", lambda: KafkaConsumer(
        **client_config(cfg), enable_auto_commit=False, consumer_timeout_ms=int(timeout * 1000)))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp: end[tp] for tp in tps if end[tp] > 0}
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                for m in msgs:
                    out.append(Record(m.partition, m.offset, m.key, m.value,
                                      {k: v for k, v in (m.headers or [])}, m.timestamp))
                    if m.offset + 1 >= end[tp]:
                        remaining.pop(tp, None)
            if max_records is not None and len(out) >= max_records:
                break
        return out
    finally:
        consumer.close()
