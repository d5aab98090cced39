"""docker-compose.yml cannot run here (no Docker engine); it is validated by Debian's docker-compose
(`docker-compose config`, installed by .ci/run) and checked against the settings it must use."""

from __future__ import annotations

import yaml

from stream.settings import declared
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


def test_compose_uses_the_documented_settings_and_services() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"kafka", "redis", "worker", "scheduler", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["worker"]["deploy"]["replicas"] >= 2
    known = {env for _, _, env, _, _, _ in declared()}
    for name in ("worker", "scheduler", "api"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092" and env["REDIS_URL"].startswith("redis://redis:")
        unknown = [k for k in env if k not in known]
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
    for name in ("kafka", "redis", "worker", "api"):
        assert "healthcheck" in services[name]
