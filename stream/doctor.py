"""``musicrec doctor``: is this deployment working? One line per check, exit status 1 on a failure.

Checks, in the order a new deployment usually fails them: Kafka reachable; the events, songs and
dead-letter topics exist (and the events topic's partitions); Redis reachable; the data directory
writable; the published model version loadable (checksums, arrays); workers' stats fresh. A check
that cannot fail the system (no version published yet: workers serve popularity) is a warning.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from index_manager.artifacts import ArtifactError
from stream.errors import ConfigError, ServiceUnavailable
from stream.kafka_config import bootstrap_timeout, client_config
from stream.redis_store import RedisKeys, connect_to, redacted, version_registry
from stream.settings import Settings
from stream.worker.stats import read_stats

OK, WARN, FAIL = "ok", "warn", "FAIL"
STATS_FRESH_S = 10.0  # workers publish every 2 s (as the API's STATS_STALE_S)
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<10} {self.detail}"


class Doctor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.stream
        self.topics: dict[str, int] | None = None  # topic -> partitions, once Kafka answered

    def run(self) -> list[Check]:
        steps: list[tuple[str, Callable[[], tuple[str, str]]]] = [
            ("kafka", self.kafka), ("topics", self.topic_check), ("redis", self.redis_check),
            ("data dir", self.data_dir), ("model", self.model), ("workers", self.workers)]
        out = []
        for name, step in steps:
            try:
                status, detail = step()
            except (ServiceUnavailable, ConfigError, ArtifactError, KafkaError, OSError, ValueError) as exc:
                status, detail = FAIL, str(exc)
            out.append(Check(name, status, detail))
        return out

    def kafka(self) -> tuple[str, str]:
        if not self.cfg.kafka_bootstrap:
            raise ConfigError("KAFKA_BOOTSTRAP is not set")
        try:
            consumer = KafkaConsumer(**client_config(self.cfg), enable_auto_commit=False,
                                     **bootstrap_timeout(KafkaConsumer, CONNECT_TIMEOUT_S))
        except (KafkaError, OSError) as exc:
            raise ServiceUnavailable(f"Kafka at {self.cfg.kafka_bootstrap} is unreachable ({exc})") from exc
        try:
            self.topics = {t: len(consumer.partitions_for_topic(t) or ()) for t in consumer.topics()}
        finally:
            consumer.close()
        return OK, f"reachable at {self.cfg.kafka_bootstrap} ({len(self.topics)} topics)"

    def topic_check(self) -> tuple[str, str]:
        if self.topics is None:
            return FAIL, "not checked: Kafka is unreachable"
        wanted = (self.cfg.events_topic, self.cfg.songs_topic, self.cfg.dlq_topic)
        missing = [t for t in wanted if t not in self.topics]
        if missing:
            return FAIL, f"missing: {', '.join(missing)} (a worker creates them when it starts)"
        return OK, (f"{self.cfg.events_topic} ({self.topics[self.cfg.events_topic]} partitions), "
                    f"{self.cfg.songs_topic}, {self.cfg.dlq_topic}")

    def redis_check(self) -> tuple[str, str]:
        connect_to(self.cfg, timeout=CONNECT_TIMEOUT_S)
        return OK, f"reachable at {redacted(self.cfg.redis_url)}"

    def data_dir(self) -> tuple[str, str]:
        root = Path(self.cfg.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
        return OK, f"{root.resolve()} is writable"

    def _client(self) -> tuple[redis.Redis, RedisKeys]:
        return connect_to(self.cfg, timeout=CONNECT_TIMEOUT_S), RedisKeys(self.cfg.redis_namespace)

    def model(self) -> tuple[str, str]:
        client, keys = self._client()
        registry = version_registry(client, keys, self.cfg.artifacts_dir)
        version = registry.published()
        if version is None:
            return WARN, "no version published yet (workers serve popularity): run `musicrec retrain`"
        artifact = registry.load(version)  # checksums, arrays, shapes: what a worker checks before a swap
        return OK, f"{version} loads ({artifact.kind}, {len(artifact.song_names)} songs)"

    def workers(self) -> tuple[str, str]:
        client, keys = self._client()
        now = time.time()
        stats = read_stats(client, keys)
        fresh = [s for s in stats if now - float(s.get("updated_at", 0.0)) <= STATS_FRESH_S]
        if not fresh:
            return FAIL, (f"no worker published stats in the last {STATS_FRESH_S:.0f} s "
                          f"({len(stats)} stale): is `musicrec worker` running?")
        names = sorted({str(s.get("worker_id") or s["worker"]) for s in fresh})
        return OK, f"{len(fresh)} live ({', '.join(names)})"


def diagnose(settings: Settings) -> list[Check]:
    return Doctor(settings).run()
