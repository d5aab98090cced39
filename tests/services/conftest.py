"""Fixtures of the service tests: the real embedded broker (Tansu) and redis-server, settings
isolated per test, and worker subprocesses stopped after each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings, load_settings, with_endpoints
from tests.services.processes import WorkerProcess


@pytest.fixture(scope="session")
def services() -> Iterator[Any]:
    from stream.services import EmbeddedServices

    with EmbeddedServices() as s:
        yield s


@pytest.fixture
def make_settings(services: Any, tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated per test: own topics, consumer group, Redis namespace and data dir;
    ``section__field=value`` sets one section's field (``model__factors=8``)."""

    def make(**overrides: object) -> Settings:
        overrides = {k.replace("__", "."): v for k, v in overrides.items()}
        tag = uuid.uuid4().hex[:8]
        values = {"events_topic": f"events-{tag}", "songs_topic": f"songs-{tag}", "dlq_topic": f"dlq-{tag}",
                  "app_id": f"app-{tag}", "redis_namespace": f"t{tag}", "data_dir": str(tmp_path / "data"),
                  "partitions": 2, "session_timeout": 6.0, "model_poll": 0.5, "batch_within": 0.02,
                  **overrides}
        return with_endpoints(load_settings(values, env={}), services.kafka_bootstrap, services.redis_url)

    return make


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log").start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
