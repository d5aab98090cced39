"""The stored value format and RecsClient's reading of it (the cut-short parse, the fallback)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from online_models.base import RecList
from stream.redis_store import RecsClient, RecsWriter, RedisKeys, connect

# ids that would confuse a careless reader of the raw bytes
AWKWARD = ["a", '{"song_id":"x"}', 'q"uote', "back\\slash", '],{"song_id":', "ünï", '"items":[', "\\", 'x\\"',
           "]}", ""]


def test_get_many_serves_lists_and_the_popular_fallback(services: Any) -> None:
    client_redis = connect(services.redis_url)
    keys = RedisKeys(f"t{uuid.uuid4().hex[:8]}")
    songs = np.array([[f"s{u}-{i}" for i in range(20)] for u in range(2)], dtype=object)
    recs = RecList(songs, np.linspace(1, 0, 40, dtype=np.float32).reshape(2, 20),
                   np.full((2, 20), None, dtype=object), "v1")
    popular = RecList(np.array([[f"p{i}" for i in range(20)]], dtype=object), np.ones((1, 20), np.float32),
                      np.full((1, 20), None, dtype=object), "v1")
    client = RecsClient(services.redis_url, keys.namespace)
    assert client.get_many(["u0", "nobody"], 5) == [None, None]  # nothing published yet
    RecsWriter(client_redis, keys).write(np.array(["u0", "u/1"], dtype=object), recs, popular=popular)
    got = client.get_many(["u0", "nobody", "u/1", "else"], 5)
    assert [g.song_ids if g else None for g in got] == [
        [f"s0-{i}" for i in range(5)], [f"p{i}" for i in range(5)], [f"s1-{i}" for i in range(5)],
        [f"p{i}" for i in range(5)]]
    assert [g.fallback for g in got if g] == [False, True, False, True]
    assert got[1] is not None and got[3] is not None
    got[1].items[0]["song_id"] = "edited"  # one caller's list is not another's
    assert got[3].items[0]["song_id"] == "p0"
    single = client.get("u/1", 3)
    assert single is not None and single.song_ids == ["s1-0", "s1-1", "s1-2"] and single.user_id == "u/1"
    with pytest.raises(ValueError):
        client.get_many(["u0"], 0)
