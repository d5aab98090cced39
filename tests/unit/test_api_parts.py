"""Pieces of the read API without services: API keys, Prometheus through prometheus_client with
stable worker names, the 15-minute history, version pruning, the Grafana dashboard's queries."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from index_manager.artifacts import ModelArtifact, save_artifact
from index_manager.follower import VersionFollower
from index_manager.registry import MemoryPointer, VersionRegistry
from stream.api.app import create_app
from stream.api.freshness import FreshnessSampler
from stream.api.history import Timeline
from stream.api.lag import Lag
from stream.api.monitor import Snapshot
from stream.api.prometheus import ApiMetrics
from stream.api.rates import EventRates, worker_views
from stream.settings import load_settings
from tests.conftest import REPO

KEY = "k3y-that-must-not-leak"
CLOSED = "redis://127.0.0.1:9/0"  # the discard port: nothing listens, connecting fails at once


def _client(key: str = KEY) -> TestClient:
    settings = load_settings({"redis_url": CLOSED, "kafka_bootstrap": "127.0.0.1:9", "api_key": key}, env={})
    return TestClient(create_app(settings))  # no `with`: no background loops, no Kafka or Redis needed


GUARDED = [("get", "/recs/u1"), ("get", "/similar/s1"), ("get", "/users/u1/events"), ("get", "/ab"),
           ("get", "/overview"), ("get", "/reports/prequential.png"), ("post", "/events"), ("post", "/recs/batch")]


@pytest.mark.parametrize("method, path", GUARDED)
def test_a_key_is_required_everywhere_but_health_and_metrics(method: str, path: str, caplog) -> None:  # type: ignore[no-untyped-def]
    client = _client()
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        r = getattr(client, method)(path, headers=headers)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
    r = getattr(client, method)(path, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code != 401, "the right key passes (Redis/Kafka are down here, so no 200)"
    assert KEY not in caplog.text


def test_health_metrics_spec_and_page_stay_open() -> None:
    client = _client()
    assert client.get("/health").status_code == 503  # Redis is down, but no key is asked for
    assert client.get("/metrics").status_code == 200
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "MUSICREC_API_KEY" in scheme["description"]
    assert "security" in spec["paths"]["/events"]["post"] and "security" not in spec["paths"]["/health"]["get"]
    assert "401" in spec["paths"]["/recs/{user_id}"]["get"]["responses"]
    assert client.get("/").status_code == 200 and client.get("/dashboard/app.js").status_code == 200


def test_without_a_key_the_spec_declares_no_security() -> None:
    settings = load_settings({"redis_url": CLOSED}, env={})
    spec = TestClient(create_app(settings)).get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert "401" not in spec["paths"]["/recs/{user_id}"]["get"]["responses"]


@pytest.mark.parametrize("key", ["with space", "caf\u00e9"])
def test_a_key_that_no_header_can_carry_is_a_config_error(key: str) -> None:
    from stream.errors import ConfigError

    with pytest.raises(ConfigError, match="MUSICREC_API_KEY"):
        _client(key)


def test_the_key_is_never_shown_by_settings() -> None:
    settings = load_settings({"api_key": KEY, "kafka_sasl_password": "pw"}, env={})
    assert KEY not in repr(settings) and "'pw'" not in repr(settings) and settings.stream.api_key == KEY


def _stats(worker: str, name: str | None, started: float, events: int, updated: float) -> dict[str, object]:
    return {"worker": worker, "worker_id": name, "started_at": started, "events": events, "refused": 1,
            "updated_at": updated, "version": "v1"}


def _metrics(workers: tuple, now: float) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:  # type: ignore[type-arg]
    snap = Snapshot(now, None, "v1", {}, workers, 5.0, FreshnessSampler().view(now), Lag(True, {0: 3, 1: 4}))
    text = ApiMetrics(lambda: snap, VersionFollower(lambda v: None)).render().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":  # a family without samples (no version served yet) is still exported
            out.setdefault(family.name, {})
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_restarted_worker_continues_its_series_under_its_stable_name() -> None:
    now = time.time()
    before = worker_views([_stats("host-a-100", "host-a", now - 60, 5000, now - 1)], EventRates(), now)
    m = _metrics(before, now)
    assert m["musicrec_worker_events_total"] == {(("worker", "host-a"),): 5000}
    # restarted: a new process (new pid), same name; the old stats linger in Redis until they expire
    after = worker_views([_stats("host-a-100", "host-a", now - 60, 5000, now - 8),
                          _stats("host-a-200", "host-a", now - 5, 40, now - 1),
                          _stats("old-7", None, now - 50, 7, now - 1)], EventRates(), now)
    m = _metrics(after, now)
    assert m["musicrec_worker_events_total"] == {(("worker", "host-a"),): 40, (("worker", "old-7"),): 7}, \
        "the newest process of each name; a worker without a name keeps its process name"
    assert m["musicrec_worker_processes"][(("worker", "host-a"),)] == 2
    assert m["musicrec_dlq_messages"][()] == 3 and m["musicrec_consumer_lag"][(("partition", "1"),)] == 4
    assert "process_cpu_seconds_total" in m and "python_info" in m, "the standard collectors"
    assert m["musicrec_http_events_total"] == {(("outcome", "accepted"),): 0, (("outcome", "refused"),): 0}


def test_the_timeline_buckets_fifteen_minutes() -> None:
    t = Timeline(span=900, bucket=10)
    t0 = 1_000_000.0
    for i in range(100):  # 100 passes a second apart: 10 buckets
        t.record(t0 + i, float(i), [0.1 * (i % 10)] if i < 50 else [])
    h = t.to_json()
    assert h["t"] == [t0 + 10 * b for b in range(10)] and h["events_per_s"][0] == pytest.approx(4.5)
    assert h["freshness_p50_s"][0] == pytest.approx(0.45) and h["freshness_p99_s"][0] == pytest.approx(0.891)
    assert h["freshness_p50_s"][9] is None, "no sampled write: no freshness, not zero"
    t.record(t0 + 2000, 1.0, [])
    assert t.to_json()["t"] == [t0 + 2000], "older than the span: dropped"
    with pytest.raises(ValueError):
        Timeline(span=10, bucket=20)


def _artifact() -> ModelArtifact:
    return ModelArtifact("als", np.array(["s1", "s2"], dtype=object), np.eye(2, dtype=np.float32),
                         np.array(["u"], dtype=object), np.ones((1, 2), np.float32), np.ones(2))


def test_prune_keeps_the_newest_the_published_the_previous_and_the_protected(tmp_path: Path) -> None:
    registry = VersionRegistry(tmp_path, MemoryPointer())
    versions = [save_artifact(tmp_path, _artifact(), f"2026010{i}T000000000000Z-als") for i in range(1, 9)]
    registry.publish(versions[1])
    registry.refuse(versions[6], {"publish": False})
    registry.publish(versions[3])
    assert registry.previous() == versions[1]
    assert registry.prune(2, protect={versions[2]}, dry_run=True) == [versions[0], versions[4], versions[5]]
    assert registry.versions() == versions, "a dry run deletes nothing"
    assert registry.prune(2, protect={versions[2]}) == [versions[0], versions[4], versions[5]]
    assert registry.versions() == [versions[1], versions[2], versions[3], versions[6], versions[7]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")], "nothing half-deleted left"
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            registry.prune(bad)  # type: ignore[arg-type]


def test_the_grafana_dashboard_queries_only_metrics_the_api_exports() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "musicrec-dashboard.json").read_text())
    now = time.time()
    exported = set(_metrics(worker_views([_stats("w-1", "w", now, 1, now)], EventRates(), now), now))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = set(re.findall(r"\b((?:musicrec|process|python)_[a-z0-9_]+)", expr))
        assert names and names <= exported, (expr, names - exported)
