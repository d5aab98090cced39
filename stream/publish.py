"""Publishing a model version: the Redis pointer every worker watches."""

from __future__ import annotations

import json
import time

import redis

from stream.redis_store import RedisKeys, as_text, translate_errors


def publish_version(client: redis.Redis, keys: RedisKeys, version: str, metrics: dict | None = None) -> None:
    """Point workers at ``version`` (they poll the pointer and also hear the channel)."""
    record = json.dumps({"version": version, "published_at": time.time(), "metrics": metrics or {}})
    with translate_errors("publishing a model version"):
        pipe = client.pipeline(transaction=True)
        pipe.set(keys.model_pointer(), version)
        pipe.lpush(keys.model_history(), record)
        pipe.ltrim(keys.model_history(), 0, 99)
        pipe.publish(keys.model_channel(), version)
        pipe.execute()


def published_version(client: redis.Redis, keys: RedisKeys) -> str | None:
    with translate_errors("reading the model pointer"):
        raw = client.get(keys.model_pointer())
    return None if raw is None else as_text(raw)
