"""A/B tests as seen from Redis: the running test's definition, and its per-arm results.

``musicrec ab start VERSION`` writes the definition to one key. Every worker polls it and serves
``VERSION`` to the treatment share of users (``online_models.abtest.in_treatment``), and the
published version to everyone else. Each worker counts its arms' hits in its stats, and this module
adds them up.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis

from index_manager.artifacts import read_manifest
from online_models.abtest import combine
from stream.errors import ConfigError
from stream.redis_store import RedisKeys, as_text, connect_to, translate_errors, version_registry
from stream.settings import Settings
from stream.worker.stats import read_stats


@dataclass(frozen=True)
class ABTest:
    treatment: str  # the model version served to the treatment arm
    share: float  # of users in the treatment arm
    horizon: int  # plays after a served list that count towards its hits
    salt: str  # a new split for every test
    started_at: float

    @classmethod
    def new(cls, treatment: str, share: float = 0.5, horizon: int = 10) -> ABTest:
        if not 0.0 < share < 1.0:
            raise ConfigError(f"--share must be between 0 and 1 (exclusive), got {share}")
        if horizon <= 0:
            raise ConfigError(f"--horizon must be positive, got {horizon}")
        return cls(treatment, share, horizon, uuid.uuid4().hex[:12], time.time())

    @classmethod
    def from_json(cls, raw: bytes | str) -> ABTest:
        obj = json.loads(raw)
        return cls(str(obj["treatment"]), float(obj["share"]), int(obj["horizon"]), str(obj["salt"]),
                   float(obj["started_at"]))

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def start_test(client: redis.Redis, keys: RedisKeys, test: ABTest) -> None:
    with translate_errors("starting the A/B test"):
        client.set(keys.ab_test(), test.to_json())


def stop_test(client: redis.Redis, keys: RedisKeys) -> ABTest | None:
    with translate_errors("stopping the A/B test"):
        pipe = client.pipeline(transaction=True)
        pipe.get(keys.ab_test())
        pipe.delete(keys.ab_test())
        raw, _ = pipe.execute()
    return None if raw is None else ABTest.from_json(raw)


def current_test(client: redis.Redis, keys: RedisKeys) -> ABTest | None:
    with translate_errors("reading the A/B test"):
        raw = client.get(keys.ab_test())
    return None if raw is None else ABTest.from_json(as_text(raw))


def results(test: ABTest | None, worker_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The test and its arms' figures summed over the workers that serve it now."""
    if test is None:
        return {"running": False}
    arms = combine([s["ab"]["arms"] for s in worker_stats
                    if isinstance(s.get("ab"), dict) and s["ab"].get("salt") == test.salt])
    control = {s["version"] for s in worker_stats if s.get("version")}
    return {"running": True, **asdict(test), "control": sorted(control), "arms": arms,
            "lift": arms["treatment"]["hit_rate"] / arms["control"]["hit_rate"]
            if arms["control"]["hit_rate"] else None}


def begin(settings: Settings, version: str, share: float, horizon: int) -> tuple[ABTest, bool]:
    """``musicrec ab start``: (the new test of ``version``, True), or (the test already running, False)."""
    cfg = settings.stream
    read_manifest(cfg.artifacts_dir, version)  # a clear error now rather than a refusal in every worker
    client, keys = connect_to(cfg), RedisKeys(cfg.redis_namespace)
    running = current_test(client, keys)
    if running is not None:
        return running, False
    test = ABTest.new(version, share, horizon)
    start_test(client, keys, test)
    return test, True


def report(settings: Settings) -> dict[str, Any]:
    """``musicrec ab status``: the running test and its arms' figures, summed over the workers."""
    cfg = settings.stream
    client, keys = connect_to(cfg), RedisKeys(cfg.redis_namespace)
    return results(current_test(client, keys), read_stats(client, keys))


def end(settings: Settings, promote: bool) -> ABTest | None:
    """``musicrec ab stop``: end the test (None if none runs); ``promote`` publishes its treatment."""
    cfg = settings.stream
    client, keys = connect_to(cfg), RedisKeys(cfg.redis_namespace)
    test = stop_test(client, keys)
    if test is not None and promote:
        version_registry(client, keys, cfg.artifacts_dir).publish(test.treatment, {"promoted_from_ab_test": test.salt})
    return test
