"""The stored value format and RecsClient's reading of it (the cut-short parse, the fallback)."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import numpy as np
import pytest

from online_models.base import RecList
from stream.redis_store import Recs, RecsClient, RecsWriter, RedisKeys, connect, encode_value

# ids that would confuse a careless reader of the raw bytes
AWKWARD = ["a", '{"song_id":"x"}', 'q"uote', "back\\slash", '],{"song_id":', "ünï", '"items":[', "\\", 'x\\"',
           "]}", ""]


def test_reading_k_items_equals_parsing_the_whole_value() -> None:
    rng = random.Random(1)
    for _ in range(500):
        n = rng.randint(0, 25)
        songs = [rng.choice(AWKWARD) + str(i) for i in range(n)]
        scores = [rng.choice([rng.random(), float("nan"), float("inf"), -1.5]) for _ in range(n)]
        reasons = [rng.choice([None, *AWKWARD]) for _ in range(n)]
        last = rng.choice([None, {"event_id": rng.choice(AWKWARD)},
                           {"items": [{"song_id": "z"}, {"song_id": "y"}, {"song_id": "x"}]}])
        raw = encode_value(rng.choice([None, *AWKWARD]), songs, scores, reasons, rng.choice(AWKWARD), 1.5, last)
        whole = json.loads(raw)
        for k in (1, 2, 10, 20, 30):
            rec = Recs.decode(raw, k=k)
            assert rec.items == whole["items"][:k]
            assert (rec.user_id, rec.model_version, rec.updated_at, rec.last_event) == (
                whole["user_id"], whole["model_version"], whole["updated_at"], whole["last_event"])


def test_values_in_another_layout_are_still_read() -> None:
    items = [{"song_id": f"s{i}", "score": 1.0, "because": None} for i in range(5)]
    raw = json.dumps({"items": items, "user_id": "u", "model_version": "v", "updated_at": 1.0,
                      "last_event": None}, indent=1).encode()
    rec = Recs.decode(raw, k=2)
    assert rec.song_ids == ["s0", "s1"] and rec.model_version == "v"


@pytest.mark.services
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
