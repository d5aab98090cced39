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


def test_the_scheduler_retrains_als_on_the_spark_cluster_of_the_pinned_version() -> None:
    import tomllib

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
               ["spark"] if d.startswith("pyspark=="))
    for name in ("spark-master", "spark-worker"):
        # the official image; driver (pyspark) and cluster must run one Spark version
        assert services[name]["image"] == f"apache/spark:{pin.split('==')[1]}"
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]
    env = services["scheduler"]["environment"]
    assert env["MUSICREC_TRAIN_ENGINE"] == "spark" and env["MUSICREC_SPARK_MASTER"] == "spark://spark-master:7077"
    assert services["scheduler"]["build"]["target"] == "trainer"
    assert services["scheduler"]["hostname"] == "scheduler"  # what executors connect back to
    # executors read the log where the driver names it: the same volume at the same path
    data = {v.split(":")[0]: v.split(":")[1] for v in services["scheduler"]["volumes"]}
    assert all(data.get(v.split(":")[0]) == v.split(":")[1] for v in services["spark-worker"]["volumes"])
    # the worker image (the base stage) has no Spark
    assert "[spark]" not in (REPO / "docker" / "Dockerfile").read_text().split("FROM base AS trainer")[0]
