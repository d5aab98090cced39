"""The workers' consumer lag, measured from outside the consumer group."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from stream.kafka_config import bootstrap_timeout, client_config
from stream.settings import StreamConfig

log = logging.getLogger("musicrec.api")


@dataclass(frozen=True)
class Lag:
    available: bool
    partitions: dict[int, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int | None:
        return sum(self.partitions.values()) if self.available else None

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "total": self.total, "error": self.error,
                "partitions": {str(p): n for p, n in sorted(self.partitions.items())}}


class LagProbe:
    """Lag of the workers' consumer group (``app_id``) on the events topic: end offsets minus
    committed offsets, read without joining the group (kafka-python group consumers hang against
    Tansu): an admin client for the committed offsets, a group-less consumer for the end offsets.

    Best effort: any failure is reported as unavailable with the reason, and the clients are
    rebuilt on the next call. Against the embedded Tansu broker the end offsets it reports trail
    the committed ones, so lag reads 0 there; against Apache Kafka the figures are exact.
    """

    def __init__(self, cfg: StreamConfig, timeout_ms: int = 3000) -> None:
        self.cfg = cfg
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._admin: Any = None
        self._consumer: Any = None

    def measure(self) -> Lag:
        if not self.cfg.kafka_bootstrap:
            return Lag(False, error="KAFKA_BOOTSTRAP is not set")
        with self._lock:
            try:
                return self._measure()
            except Exception as exc:  # a monitoring probe must never take the read API down
                self._close()
                return Lag(False, error=f"{type(exc).__name__}: {exc}")

    def _measure(self) -> Lag:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        def bounded(cls: Any) -> dict[str, Any]:
            # an unreachable broker would otherwise hold the probe for kafka-python's 30 s bootstrap wait
            return {**client_config(self.cfg), "request_timeout_ms": self.timeout_ms,
                    **bootstrap_timeout(cls, self.timeout_ms / 1000)}

        if self._admin is None:
            self._admin = KafkaAdminClient(**bounded(KafkaAdminClient))
        if self._consumer is None:
            # group-less (never joins); the session/heartbeat values only satisfy kafka-python 2's
            # check that they stay below request_timeout_ms, which bounds end_offsets() here
            self._consumer = KafkaConsumer(**bounded(KafkaConsumer), enable_auto_commit=False,
                                           session_timeout_ms=self.timeout_ms - 500,
                                           heartbeat_interval_ms=(self.timeout_ms - 500) // 3)
        topic, group = self.cfg.events_topic, self.cfg.app_id
        parts = self._consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return Lag(False, error=f"topic {topic} does not exist yet")
        if hasattr(self._admin, "list_group_offsets"):  # kafka-python >= 3: {group: {tp: offset}}
            committed = self._admin.list_group_offsets(group).get(group, {})
        else:  # kafka-python 2.x
            committed = self._admin.list_consumer_group_offsets(group)
        end = self._consumer.end_offsets(tps)
        start = self._consumer.beginning_offsets(tps)
        lag = {}
        for tp in tps:
            meta = committed.get(tp)
            # a partition the group never committed is read from its beginning
            done = meta.offset if meta is not None and meta.offset >= 0 else start[tp]
            lag[tp.partition] = max(0, int(end[tp]) - int(done))
        return Lag(True, lag)

    def _close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # closing a broken client must not hide why it broke
                    log.debug("closing a Kafka client failed: %s", exc)
        self._admin = self._consumer = None

    def close(self) -> None:
        with self._lock:
            self._close()
