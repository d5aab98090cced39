"""The read API (stream.api) against the real embedded redis-server, with a seeded model version."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.base import RecList
from stream.api.app import create_app
from stream.api.freshness import recs_pattern
from stream.redis_store import RecsWriter, RedisKeys, connect
from stream.services import free_port
from stream.settings import Settings, with_endpoints
from tests.services.processes import publish
from tests.services.test_worker_services import seeded


def wait_for(fetch: Callable[[], Any], pred: Callable[[Any], bool], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = fetch()
        if pred(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")


def write_values(settings: Settings, lists: dict[str | None, list[tuple[str, float, str | None]]],
                 version: str, produced_at: float | None = None) -> float:
    """Store lists as a worker would (RecsWriter); the None key is the popularity list."""
    client = connect(settings.stream.redis_url)
    keys = RedisKeys(settings.stream.redis_namespace)
    users = [u for u in lists if u is not None]

    def reclist(rows: list[list[tuple[str, float, str | None]]]) -> RecList:
        k = max(len(r) for r in rows)
        out = RecList.empty(len(rows), k, version)
        for i, row in enumerate(rows):
            for j, (song, score, why) in enumerate(row):
                out.song_ids[i, j], out.scores[i, j], out.reasons[i, j] = song, score, why
        return out

    last = None if produced_at is None else [{"event_id": f"ev-{u}", "ts": produced_at, "produced_at": produced_at}
                                             for u in users]
    popular = reclist([lists[None]]) if None in lists else None
    return RecsWriter(client, keys).write(np.array(users, dtype=object), reclist([lists[u] for u in users]), last,
                                          popular)


@pytest.fixture
def api(make_settings) -> Iterator[tuple[TestClient, Settings, str]]:  # type: ignore[no-untyped-def]
    settings, _, version = seeded(make_settings)
    write_values(settings, {
        "u1": [(f"s{i}", 1.0 - i / 10, f"because you played s{i + 1}") for i in range(1, 20, 2)],
        "a/b": [("s2", 0.5, None)],
        None: [("s0", 9.0, None), ("s2", 8.0, None), ("s4", 7.0, None)],
    }, version, produced_at=time.time() - 0.3)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/health").json(), lambda h: h["model"]["served"] == version, 30,
                 "the API to load the published version")
        yield client, settings, version


def test_recs_of_a_known_user_with_explanations(api) -> None:  # type: ignore[no-untyped-def]
    client, _, version = api
    r = client.get("/recs/u1", params={"k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "u1" and body["model_version"] == version and body["fallback"] is False
    assert body["arm"] is None
    assert [i["song_id"] for i in body["items"]] == ["s1", "s3", "s5"]
    assert body["items"][0]["because"] == "because you played s2"
    assert body["updated_at"] > body["last_event"]["produced_at"]
    # ids are percent-encoded in the path and may contain "/"
    assert client.get("/recs/a%2Fb").json()["items"][0]["song_id"] == "s2"


def test_unknown_user_gets_popularity(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    body = client.get("/recs/someone-new", params={"k": 2}).json()
    assert body["fallback"] is True and body["user_id"] == "someone-new"
    assert [i["song_id"] for i in body["items"]] == ["s0", "s2"]


@pytest.mark.parametrize("query, status, needle", [
    ("k=0", 422, "k: "), ("k=101", 422, "less than or equal to 100"), ("k=ten", 422, "k: "),
])
def test_k_limits(api, query: str, status: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    for path in ("/recs/u1", "/similar/s0"):
        r = client.get(f"{path}?{query}")
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]


@pytest.mark.parametrize("user, needle", [("bad%01id", "control characters"), ("x" * 257, "longer than 256"),
                                          ("%20", "empty"), ("two%0Alines", "control characters")])
def test_bad_ids_are_400(api, user: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    for path in (f"/recs/{user}", f"/users/{user}/events", f"/similar/{user}"):
        r = client.get(path)
        assert r.status_code == 400, (path, r.text)
        assert needle in r.json()["error"]


def test_similar_songs_from_the_published_version(api) -> None:  # type: ignore[no-untyped-def]
    client, _, version = api
    r = client.get("/similar/s0", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    songs = [i["song_id"] for i in body["items"]]
    assert body["model_version"] == version and len(songs) == 5 and "s0" not in songs
    # the synthetic log has two taste clusters, even and odd songs
    assert sum(int(s[1:]) % 2 == 0 for s in songs) >= 4, songs
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    r = client.get("/similar/not-a-song")
    assert r.status_code == 404 and version in r.json()["error"]


def test_the_index_follows_the_pointer_and_keeps_serving_through_a_bad_version(api) -> None:  # type: ignore[no-untyped-def]
    client, settings, version = api
    cfg = settings.stream
    redis, keys = connect(cfg.redis_url), RedisKeys(cfg.redis_namespace)
    broken = "20991231T000000000000Z-als"  # newer than anything, and not on disk
    publish(settings, broken)
    health = wait_for(lambda: client.get("/health").json(), lambda h: h["model"]["published"] == broken, 10)
    assert health["model"]["served"] == version and health["status"] == "degraded"
    wait_for(lambda: client.get("/metrics").text, lambda t: "musicrec_index_refused_versions_total 1" in t, 10)
    assert client.get("/similar/s0").json()["model_version"] == version, "the old version keeps serving"

    newer = retrain_als(EventLog(cfg.log_dir), cfg.artifacts_dir, settings.model).version
    publish(settings, newer)
    wait_for(lambda: client.get("/similar/s0").json()["model_version"], lambda v: v == newer, 20, "the swap")
    overview = wait_for(lambda: client.get("/overview").json(), lambda o: o["model"]["published"] == newer, 10)
    assert overview["model"]["served"] == newer and overview["model"]["index_songs"] == 120
    assert "gate" in overview["model"]["metrics"], "the manifest's metrics of the published version"
    assert overview["ab"] == {"running": False} and client.get("/ab").json() == {"running": False}
    from stream.abtest import ABTest, start_test

    test = ABTest.new(newer, 0.25)
    start_test(redis, keys, test)
    ab = client.get("/ab").json()  # no worker serves it here: the test, with empty arms
    assert ab["running"] and ab["treatment"] == newer and ab["share"] == 0.25 and ab["salt"] == test.salt
    assert ab["arms"]["treatment"]["served"] == 0 and ab["lift"] is None


def test_user_events_from_the_log(api) -> None:  # type: ignore[no-untyped-def]
    client, settings, _ = api
    r = client.get("/users/u1/events", params={"n": 5})
    assert r.status_code == 200
    events = r.json()["events"]
    logged = EventLog(settings.stream.log_dir).read()
    mine = logged.event_ids[logged.user_ids == "u1"]
    assert [e["event_id"] for e in events] == list(mine[::-1][:5]), "newest first"
    assert {e["event"] for e in events} <= {"play", "skip"}
    assert client.get("/users/nobody/events").json()["events"] == []
    assert client.get("/users/u1/events?n=0").status_code == 422


# -- Prometheus ------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """A strict reader of the text exposition format 0.0.4: every sample belongs to a family
    declared by HELP and TYPE before it, labels are well quoted, values are floats, no duplicates."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in families and doc, line
            families[name] = {"help": doc, "type": None, "samples": []}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert families[name]["type"] is None and kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, raw_labels, raw_value = m.groups()
            labels: tuple[tuple[str, str], ...] = ()
            if raw_labels:
                pairs = _LABEL.findall(raw_labels)
                assert ",".join(f'{k}="{v}"' for k, v in pairs) == raw_labels, line
                labels = tuple(pairs)
            value = float(raw_value)  # accepts NaN, +Inf
            family = next(f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in families)
            assert families[family]["type"] is not None
            assert (name, labels) not in seen, f"duplicate sample {line!r}"
            seen.add((name, labels))
            families[family]["samples"].append((name, dict(labels), value))
    return families


def test_metrics_parse_as_prometheus_and_follow_the_workers(api) -> None:  # type: ignore[no-untyped-def]
    client, settings, version = api
    cfg = settings.stream
    redis, keys = connect(cfg.redis_url), RedisKeys(cfg.redis_namespace)

    def stats(events: int, refused: int) -> None:  # what a worker publishes (stream.worker.parts)
        redis.set(keys.stats("w-1"), json.dumps({
            "events": events, "refused": refused, "batches": 3, "users_written": 9, "last_batch_ms": 12.5,
            "swaps": 1, "version": version, "users": 60, "songs": 0, "songs_indexed": 0, "catalog_lag_ms": 0.0,
            "worker": "w-1", "updated_at": time.time()}))

    stats(100, 2)
    wait_for(lambda: client.get("/overview").json()["workers"], lambda w: len(w) == 1, 10)
    time.sleep(0.6)  # the rate needs two published samples at different times
    stats(400, 3)
    r = wait_for(lambda: client.get("/metrics"), lambda r: 'musicrec_worker_events_total{worker="w-1"} 400' in r.text)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = parse_prometheus(r.text)
    assert fams["musicrec_events_per_second"]["samples"][0][2] > 0
    assert fams["musicrec_dlq_messages"]["samples"][0][2] == 3
    assert fams["musicrec_worker_refused_total"]["type"] == "counter"
    assert fams["musicrec_workers"]["samples"][0][2] == 1
    assert fams["musicrec_model_published_info"]["samples"] == [("musicrec_model_published_info",
                                                                 {"version": version}, 1.0)]
    assert fams["musicrec_index_songs"]["samples"][0][2] == 120
    assert fams["musicrec_redis_up"]["samples"][0][2] == 1
    # committed offsets (admin client) and end offsets (group-less consumer), never joining the group
    wait_for(lambda: client.get("/metrics").text, lambda t: "musicrec_consumer_lag_available 1" in t, 15)

    hist = fams["musicrec_freshness_seconds"]
    assert hist["type"] == "histogram"
    buckets = [(float(lbl["le"]), v) for n, lbl, v in hist["samples"] if n.endswith("_bucket")]
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets) and math.isinf(buckets[-1][0])
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "cumulative"
    count = next(v for n, _, v in hist["samples"] if n.endswith("_count"))
    assert counts[-1] == count >= 2, "u1 and a/b were written with a last event"
    # they were written 0.3 s after their event: every sample lands in the le=0.5 bucket
    assert dict(buckets)[0.5] == count and dict(buckets)[0.25] == 0
    p50 = next(v for _, lbl, v in fams["musicrec_freshness_recent_seconds"]["samples"] if lbl["quantile"] == "0.5")
    assert 0.25 < p50 < 0.5

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["workers"][0]["worker"] == "w-1"


def test_freshness_sampling_counts_each_write_once(api) -> None:  # type: ignore[no-untyped-def]
    client, settings, version = api
    first = wait_for(lambda: client.get("/overview").json()["freshness"]["samples"], lambda n: n >= 2)
    time.sleep(2.5)  # a few more passes over the same keys
    assert client.get("/overview").json()["freshness"]["samples"] == first
    write_values(settings, {"u1": [("s1", 1.0, None)]}, version, produced_at=time.time() - 1.5)
    fresh = wait_for(lambda: client.get("/overview").json()["freshness"], lambda f: f["samples"] == first + 1)
    assert fresh["p99_s"] >= 1.4


def test_openapi_and_dashboard_assets(api) -> None:  # type: ignore[no-untyped-def]
    client, settings, _ = api
    spec = client.get("/openapi.json").json()
    for path in ("/recs/{user_id}", "/similar/{song_id}", "/users/{user_id}/events", "/health", "/metrics"):
        assert path in spec["paths"], path
    assert "arm" in spec["components"]["schemas"]["RecsOut"]["properties"]
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="recs-list"' in page.text
    assert client.get("/dashboard/app.js").headers["content-type"].startswith(("text/javascript",
                                                                                "application/javascript"))
    assert client.get("/dashboard/style.css").status_code == 200
    # the evaluation plot: 404 with a hint until a prequential run writes it, then served as is
    r = client.get("/reports/prequential.png")
    assert r.status_code == 404 and "--plot" in r.json()["error"]
    png = Path(settings.stream.data_dir) / "reports" / "prequential.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = client.get("/reports/prequential.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png.read_bytes()
    assert client.get("/overview").json()["report"]["prequential_png"] is True


def test_unreachable_redis_and_kafka_are_503_not_a_crash(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = with_endpoints(make_settings(), f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as client:
        r = client.get("/recs/u1")
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        h = client.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        assert client.get("/similar/s0").status_code == 503
        metrics = parse_prometheus(wait_for(lambda: client.get("/metrics").text, lambda t: "redis_up 0" in t))
        assert metrics["musicrec_redis_up"]["samples"][0][2] == 0
        lag = wait_for(lambda: client.get("/overview").json()["lag"], lambda lag: lag["error"] != "not measured yet")
        assert lag["available"] is False and lag["error"]


def test_recs_pattern_matches_only_recs_keys() -> None:
    keys = RedisKeys("ns*[x]")
    pattern = recs_pattern(keys)
    assert pattern == "ns\\*\\[x\\]:recs:*"
    assert keys.recs("u 1").startswith(keys.recs(""))
