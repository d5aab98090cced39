"""The API against its own OpenAPI spec (schemathesis, every check) on a fresh system with a key,
HTTP ingestion into the real broker, batch reads from the real redis-server, and the CLI's
operator commands (doctor, versions)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from index_manager.artifacts import ModelArtifact, save_artifact
from online_models.event_rules import MAX_ID_CHARS
from stream.api.app import create_app, server_options
from stream.api.ingest import CLOCK_STEP_S
from stream.api.routes import MAX_EXCLUDE
from stream.events import parse_events
from stream.kafka_io import ensure_topics, read_topic
from stream.services import free_port
from stream.settings import Settings, to_env
from stream.worker.stats import publish_stats
from tests.services.processes import publish
from tests.services.test_api import write_values

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ST = Path(sys.executable).with_name("st")
OPERATIONS = 13  # every operation of the spec, each tested
MAX_EXAMPLES = 40  # per operation: ~30 s for the thirteen operations here; CI's budget is minutes, not hours
RUN_BUDGET_S = 240.0


class Server:
    """``create_app`` served by uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning", **server_options()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def fresh(make_settings) -> Iterator[tuple[Server, Settings]]:  # type: ignore[no-untyped-def]
    """A fresh system: no topics, no model, no list, no event in the log; a key is set."""
    settings = make_settings(stream__api_key=KEY)
    with Server(settings) as server:
        yield server, settings


def test_the_longest_request_the_spec_allows_gets_a_json_answer(fresh) -> None:  # type: ignore[no-untyped-def]
    """Every id at its longest, of 4-byte characters (12 bytes each once percent-encoded): ~320 kB of
    URL, which uvicorn's HTTP parser refused with a bare text/plain 400 by default."""
    import urllib.error
    import urllib.parse
    import urllib.request

    server, _ = fresh
    longest = "\U0002ce6b" * MAX_ID_CHARS
    url = (f"http://127.0.0.1:{server.port}/recs/{urllib.parse.quote(longest, safe='')}?k=10&exclude="
           + urllib.parse.quote(",".join([longest] * MAX_EXCLUDE), safe=""))
    assert len(url) > 300_000
    request = urllib.request.Request(url, headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, content_type, body = response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as exc:
        status, content_type, body = exc.code, exc.headers["content-type"], exc.read()
    assert content_type == "application/json", (status, body[:200])
    json.loads(body)


def test_schemathesis_all_checks_pass_on_a_fresh_system_with_a_key(fresh) -> None:  # type: ignore[no-untyped-def]
    server, _ = fresh
    # POST /events states its ts bound from the API's clock rounded to the hour: a run that crossed an
    # hour would test the next hour's server against the previous hour's spec
    to_next_hour = CLOCK_STEP_S - time.time() % CLOCK_STEP_S
    if to_next_hour < RUN_BUDGET_S:
        time.sleep(to_next_hour + 1)
    started = time.monotonic()
    result = subprocess.run(
        [str(ST), "run", f"http://127.0.0.1:{server.port}/openapi.json", "--checks", "all",
         "-H", f"Authorization: Bearer {KEY}", "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
         "--seed", "17", "--output-truncate", "true", "--no-color"],
        capture_output=True, text=True, timeout=RUN_BUDGET_S, env={**os.environ, "NO_COLOR": "1"})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and int(cases[1]) == int(cases[2]) >= OPERATIONS * 20, out[-2000:]
    assert re.search(rf"Tested: {OPERATIONS}\b", out), out[-2000:]
    print(f"schemathesis: {cases[0]} in {time.monotonic() - started:.0f} s")


def _events(n: int, user: str = "http-u", t0: float | None = None) -> list[dict[str, object]]:
    t0 = time.time() if t0 is None else t0
    return [{"user_id": f"{user}{i % 3}", "song_id": f"s{i}", "event": "play" if i % 4 else "skip",
             "ts": t0 + i, "ms_played": 1000 * i, "event_id": f"http-{user}-{i}"} for i in range(n)]


def test_post_events_produces_keyed_by_user_all_or_nothing(fresh) -> None:  # type: ignore[no-untyped-def]
    _, settings = fresh
    cfg = settings.stream
    client = TestClient(create_app(settings))
    assert client.post("/events", json=_events(2)).status_code == 401, "the key is required"
    bad = _events(5)
    bad[1]["ts"] = time.time() + 3 * 86400
    bad[3]["user_id"] = " "
    bad.append("not an object")  # type: ignore[arg-type]
    r = client.post("/events", json=bad, headers=AUTH)
    assert r.status_code == 400, r.text
    body = r.json()
    assert [i["index"] for i in body["items"]] == [1, 3, 5]
    assert "future" in body["items"][0]["reason"] and "empty" in body["items"][1]["reason"]
    assert "JSON object" in body["items"][2]["reason"] and "nothing" in body["error"]
    assert client.post("/events", content=b"[{", headers=AUTH).status_code == 400
    too_many = _events(cfg.api_max_batch + 1)
    assert "MUSICREC_API_MAX_BATCH" in client.post("/events", json=too_many, headers=AUTH).json()["error"]

    good = _events(30)
    r = client.post("/events", json=good, headers=AUTH)
    assert r.status_code == 202 and r.json() == {"accepted": 30, "topic": cfg.events_topic}, r.text
    records = read_topic(cfg, cfg.events_topic, timeout=10)
    assert len(records) == 30, "only the good request's events: the refused ones produced nothing"
    assert all(rec.key == json.loads(rec.value)["user_id"].encode() for rec in records)
    # what the worker does with them: the same parser, with the message keys
    parsed = parse_events([r.value for r in records], [r.key for r in records])
    assert not parsed.refused and sorted(parsed.events.event_ids) == sorted(e["event_id"] for e in good)
    metrics = client.get("/metrics").text
    assert 'musicrec_http_events_total{outcome="accepted"} 30.0' in metrics


def test_post_recs_batch_reads_many_users_and_falls_back(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(stream__api_key=KEY)
    with TestClient(create_app(settings)) as client:
        body = client.post("/recs/batch", json={"user_ids": ["u1", "nobody"], "k": 2}, headers=AUTH).json()
        assert [r["fallback"] for r in body["recs"]] == [True, True] and body["recs"][0]["items"] == []
        assert body["recs"][0]["model_version"] is None, "fresh system: nothing written yet, still 200"
        write_values(settings, {"u1": [("s1", 0.9, "because you played s2"), ("s3", 0.5, None), ("s5", 0.1, None)],
                                "a/b": [("s2", 0.5, None)], None: [("s0", 9.0, None), ("s4", 8.0, None)]}, "v1")
        r = client.post("/recs/batch", json={"user_ids": ["u1", "nobody", "a/b", "u1"], "k": 2}, headers=AUTH)
        assert r.status_code == 200, r.text
        recs = r.json()["recs"]
        assert [x["user_id"] for x in recs] == ["u1", "nobody", "a/b", "u1"], "in the order asked"
        assert [i["song_id"] for i in recs[0]["items"]] == ["s1", "s3"] and not recs[0]["fallback"]
        assert [i["song_id"] for i in recs[1]["items"]] == ["s0", "s4"] and recs[1]["fallback"]
        assert recs[2]["items"][0]["song_id"] == "s2" and recs[3] == recs[0]
        r = client.post("/recs/batch", json={"user_ids": ["ok", "", "x\x01"]}, headers=AUTH)
        assert r.status_code == 400 and [i["index"] for i in r.json()["items"]] == [1, 2]
        assert client.post("/recs/batch", json={"user_ids": ["u1"], "k": 0}, headers=AUTH).status_code == 422
        assert client.get("/similar/s0", headers=AUTH).status_code == 404, "no version published: 404, not 503"


def _musicrec(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("musicrec")), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **to_env(settings), "COLUMNS": "200"})


def test_doctor_finds_what_is_missing_then_passes(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    cfg = settings.stream
    r = _musicrec(settings, "doctor")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.strip()}
    assert lines["kafka"].startswith("ok") and lines["redis"].startswith("ok") and lines["data"].startswith("ok")
    assert lines["topics"].startswith("FAIL") and cfg.events_topic in lines["topics"]
    assert lines["model"].startswith("warn") and lines["workers"].startswith("FAIL")

    ensure_topics(cfg)
    artifact = ModelArtifact("als", np.array(["s1", "s2"], dtype=object), np.eye(2, dtype=np.float32),
                             np.array(["u"], dtype=object), np.ones((1, 2), np.float32), np.ones(2))
    publish(settings, save_artifact(cfg.artifacts_dir, artifact))
    from stream.redis_store import RedisKeys, connect

    publish_stats(connect(cfg.redis_url), RedisKeys(cfg.redis_namespace), "box-1", {"worker_id": "box", "events": 1})
    r = _musicrec(settings, "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(line.startswith("ok") for line in r.stdout.splitlines() if line.strip()), r.stdout
    assert f"({cfg.partitions} partitions)" in r.stdout and "1 live (box)" in r.stdout


def test_versions_list_and_prune_spare_what_is_in_use(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    cfg = settings.stream
    artifact = ModelArtifact("als", np.array(["s1", "s2"], dtype=object), np.eye(2, dtype=np.float32),
                             np.array(["u"], dtype=object), np.ones((1, 2), np.float32), np.ones(2))
    versions = [save_artifact(cfg.artifacts_dir, artifact, f"2026010{i}T000000000000Z-als") for i in range(1, 8)]
    publish(settings, versions[0])
    publish(settings, versions[2])
    from stream.abtest import ABTest, start_test
    from stream.redis_store import RedisKeys, connect

    client, keys = connect(cfg.redis_url), RedisKeys(cfg.redis_namespace)
    start_test(client, keys, ABTest.new(versions[1]))
    publish_stats(client, keys, "w-1", {"worker_id": "w", "version": versions[3]})
    rows = {r["version"]: r["roles"] for r in json.loads(_musicrec(settings, "versions", "list", "--json").stdout)}
    assert rows[versions[2]] == ["published"] and rows[versions[0]] == ["previous"]
    assert rows[versions[1]] == ["ab-treatment"] and rows[versions[3]] == ["served"] and rows[versions[4]] == []
    r = _musicrec(settings, "versions", "prune", "--keep", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cfg.artifacts_dir.iterdir()) == [versions[i] for i in (0, 1, 2, 3, 6)]
    assert _musicrec(settings, "versions", "prune", "--keep", "0").returncode != 0
