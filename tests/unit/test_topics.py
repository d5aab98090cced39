"""Topics as this tool creates them: replication, min.insync.replicas and a compacted catalog from the
settings; a broker refusing a topic's configs still gets the topic, and a warning naming them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kafka.admin import NewTopic
from kafka.errors import InvalidConfigurationError

from stream.errors import ConfigError
from stream.kafka_io import create_missing, wanted_topics
from stream.settings import load_settings


class FakeAdmin:
    """Records create_topics calls; refuses any topic carrying configs when ``refuse_configs``."""

    def __init__(self, existing: set[str], refuse_configs: bool) -> None:
        self.existing = set(existing)
        self.refuse_configs = refuse_configs
        self.created: list[tuple[str, int, int, dict[str, str]]] = []

    def list_topics(self) -> list[str]:
        return sorted(self.existing)

    def create_topics(self, topics: list[NewTopic]) -> Any:
        for t in topics:
            if self.refuse_configs and t.topic_configs:
                raise InvalidConfigurationError(f"unknown config for {t.name}")
            self.existing.add(t.name)
            self.created.append((t.name, t.num_partitions, t.replication_factor, dict(t.topic_configs or {})))


def test_topics_carry_the_configured_durability_and_a_compacted_catalog() -> None:
    cfg = load_settings({"partitions": 12, "replication_factor": 3, "min_insync_replicas": 2}, env={}).stream
    topics = {t.name: t for t in wanted_topics(cfg)}
    events, songs, dlq = topics[cfg.events_topic], topics[cfg.songs_topic], topics[cfg.dlq_topic]
    assert (events.num_partitions, events.replication_factor) == (12, 3)
    assert all(t.replication_factor == 3 and t.topic_configs["min.insync.replicas"] == "2" for t in topics.values())
    assert songs.topic_configs["cleanup.policy"] == "compact"
    assert "cleanup.policy" not in events.topic_configs and "cleanup.policy" not in dlq.topic_configs


def test_min_insync_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match="MUSICREC_MIN_INSYNC_REPLICAS"):
        load_settings({"replication_factor": 2, "min_insync_replicas": 3}, env={})


def test_only_missing_topics_are_created_with_their_configs() -> None:
    cfg = load_settings({}, env={}).stream
    admin = FakeAdmin({cfg.events_topic}, refuse_configs=False)
    assert create_missing(admin, wanted_topics(cfg)) == [cfg.songs_topic, cfg.dlq_topic]
    assert [c[0] for c in admin.created] == [cfg.songs_topic, cfg.dlq_topic]
    assert admin.created[0][3] == {"min.insync.replicas": "1", "cleanup.policy": "compact"}


def test_a_broker_refusing_configs_gets_the_topics_without_them_and_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_settings({}, env={}).stream
    admin = FakeAdmin(set(), refuse_configs=True)
    with caplog.at_level(logging.WARNING, logger="musicrec.kafka"):
        create_missing(admin, wanted_topics(cfg))
    assert sorted(c[0] for c in admin.created) == sorted([cfg.events_topic, cfg.songs_topic, cfg.dlq_topic])
    assert all(c[3] == {} for c in admin.created)
    refused = [r.getMessage() for r in caplog.records]
    assert len(refused) == 3 and any("cleanup.policy" in m and cfg.songs_topic in m for m in refused)
