"""The stored value format and RecsClient's reading of it (the cut-short parse, the fallback)."""

from __future__ import annotations

import json
import random

from stream.redis_store import Recs, encode_value

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
