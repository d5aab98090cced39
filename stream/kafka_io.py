"""kafka-python at the edge: client settings, topic creation, a validating producer, an assign() reader.

kafka-python is used for producing and for plain reads with ``assign()`` (its *group* consumer hangs
against Tansu); group consumption is Faust's job (``stream.worker``). Library exceptions become
``ServiceUnavailable`` here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from index_manager.errors import ConfigError, ServiceUnavailable
from online_models.batch import EventBatch
from stream.events import Song, encode_batch, encode_song
from stream.settings import StreamConfig

# Connecting at start-up: kafka-python waits up to 30 s per bootstrap by default, so six attempts
# took minutes before a worker pointed at a dead broker said so. Candidates for settings.
CONNECT_ATTEMPTS = 4
CONNECT_FIRST_DELAY_S = 0.5
CONNECT_TIMEOUT_S = 3.0


class _RedactSecrets(logging.Filter):
    """kafka-python logs its whole configuration at DEBUG (``KafkaAdminClient``), SASL password
    included. This filter masks secret-named entries and any registered secret value."""

    KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def _clean(self, value: Any) -> Any:
        if isinstance(value, Mapping) and any(k in value for k in self.KEYS):
            return {k: ("***" if k in self.KEYS and v else v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = self._clean(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        if self.secrets:
            try:
                text = record.getMessage()
            except (TypeError, ValueError):  # a malformed record: logging reports it itself
                return True
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, ()
        return True


_REDACT = _RedactSecrets()
# a logger's filters do not apply to its children's records: every kafka-python module logger gets it
# (they all exist once ``kafka`` is imported above)
for _name, _logger in list(logging.root.manager.loggerDict.items()):
    if (_name == "kafka" or _name.startswith("kafka.")) and isinstance(_logger, logging.Logger):
        _logger.addFilter(_REDACT)


def _bootstrap_timeout(client: type, seconds: float) -> dict[str, Any]:
    """Bound one bootstrap attempt (kafka-python >= 3; older versions have no such option)."""
    return {"bootstrap_timeout_ms": int(seconds * 1000)} if "bootstrap_timeout_ms" in getattr(
        client, "DEFAULT_CONFIG", {}) else {}


def client_config(cfg: StreamConfig) -> dict[str, Any]:
    """Connection settings shared by every kafka-python client (security passes straight through)."""
    if not cfg.kafka_bootstrap:
        raise ConfigError("KAFKA_BOOTSTRAP is not set (or run `musicrec up` and export what it prints)")
    conf: dict[str, Any] = {"bootstrap_servers": cfg.kafka_bootstrap.split(","),
                            "security_protocol": cfg.kafka_security_protocol}
    if cfg.kafka_security_protocol.startswith("SASL"):
        conf.update(sasl_mechanism=cfg.kafka_sasl_mechanism or "PLAIN",
                    sasl_plain_username=cfg.kafka_sasl_username,
                    sasl_plain_password=cfg.kafka_sasl_password)
        if cfg.kafka_sasl_password:
            _REDACT.secrets.add(cfg.kafka_sasl_password)
    if cfg.kafka_ssl_cafile:
        conf["ssl_cafile"] = cfg.kafka_ssl_cafile
    return conf


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


def ensure_topics(cfg: StreamConfig, attempts: int = CONNECT_ATTEMPTS, first_delay: float = CONNECT_FIRST_DELAY_S,
                  connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Create the events, catalog and dead-letter topics if they do not exist (idempotent).

    This is the first thing ``musicrec worker`` and ``musicrec replay`` do, so an unreachable broker
    surfaces here: ``attempts`` tries of at most ``connect_timeout`` s each, with backoff from
    ``first_delay`` s in between (about 15 s in all with the defaults), then ``ServiceUnavailable``."""
    wanted = [NewTopic(cfg.events_topic, cfg.partitions, 1), NewTopic(cfg.songs_topic, 1, 1),
              NewTopic(cfg.dlq_topic, 1, 1)]

    def create() -> None:
        admin = KafkaAdminClient(**client_config(cfg), request_timeout_ms=10000,
                                 **_bootstrap_timeout(KafkaAdminClient, connect_timeout))
        try:
            existing = set(admin.list_topics())
            missing = [t for t in wanted if t.name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                    admin.create_topics(missing)
        finally:
            admin.close()

    with_retries("creating topics", create, attempts, first_delay)


class EventProducer:
    """Validating producer of listening and catalog events (kafka-python)."""

    def __init__(self, cfg: StreamConfig, linger_ms: int = 5) -> None:
        self.cfg = cfg
        self._producer: KafkaProducer = with_retries("connecting the producer", lambda: KafkaProducer(
            **client_config(cfg), linger_ms=linger_ms, batch_size=1 << 16, acks=1, retries=5))

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
