"""The published JSON Schemas (docs/schemas) are generated from the code and agree with the validators."""

from __future__ import annotations

import functools
import json
import math
import re
import time
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_models.event_rules import MAX_FUTURE_S, id_problem
from stream.api.ingest import events_body_schema, receiver_clock, ts_limit
from stream.contracts import FUTURE_KEYWORD, all_schemas, event_schema, id_pattern, recs_value_schema, render
from stream.events import InvalidEvent, Song, encode_song, parse_song, validate_event
from stream.redis_store import Recs, encode_value
from tests.conftest import REPO

SCHEMAS = REPO / "docs" / "schemas"


def test_the_schema_files_are_the_generated_ones() -> None:
    for name, schema in all_schemas().items():
        path = SCHEMAS / name
        assert path.is_file(), f"{path} is missing: python -m stream.contracts docs/schemas"
        stale = f"{name} is stale: python -m stream.contracts docs/schemas"
        assert path.read_text(encoding="utf-8") == render(schema), stale
        jsonschema_rs.meta.validate(schema)  # each is a valid draft 2020-12 schema


def test_the_id_pattern_is_the_id_rule_for_every_character() -> None:
    """Exhaustive over the BMP: one character alone and between two letters (surrogates aside:
    the pattern leaves them to UTF-8, see stream.contracts.id_pattern)."""
    pattern = re.compile(id_pattern())
    for c in map(chr, range(0x10000)):
        if 0xD800 <= ord(c) <= 0xDFFF:
            continue
        for value in (c, f"a{c}b", f"{c}{c}"):
            assert bool(pattern.search(value)) == (id_problem(value, "id") is None), repr(value)


@functools.cache
def _validator_of(name: str, now: float) -> Any:
    return _validator(all_schemas()[name], now)  # compiling the id pattern costs ~0.1 s: once per schema


def _validator(schema: dict[str, Any], now: float) -> Any:
    """The schema with its receiver-relative ts bound made absolute, as the API's spec states it."""
    schema = json.loads(json.dumps(schema))
    schema["properties"]["ts"]["maximum"] = now + schema["properties"]["ts"][FUTURE_KEYWORD]
    return jsonschema_rs.validator_for(schema)


def _accepts(check: Any, obj: Any) -> bool:
    try:
        check(obj)
    except InvalidEvent:
        return False
    return True


_ids = st.one_of(st.text(max_size=3), st.text(min_size=250, max_size=260), st.just(" \u3000"), st.just("u\x85"),
                 st.integers(), st.none(), st.booleans())
_numbers = st.one_of(st.integers(-10, 10**10), st.floats(allow_nan=False), st.sampled_from([86_400_000, 86_400_001]),
                     st.booleans(), st.none(), st.text(max_size=2), st.just(2**70))
_events = st.fixed_dictionaries({}, optional={
    "user_id": _ids, "song_id": _ids, "event": st.sampled_from(["play", "skip", "Play", None, 1]),
    "ts": st.one_of(_numbers, st.floats(0, 3e9)), "ms_played": _numbers, "event_id": _ids,
    "extra": st.integers()})


@settings(max_examples=600, deadline=None)
@given(_events)
def test_the_event_schema_and_the_validator_agree(obj: dict[str, Any]) -> None:
    now = 1.8e9
    accepted = _accepts(lambda o: validate_event(o, now=now), obj)
    assert _validator_of("event.schema.json", now).is_valid(obj) == accepted, obj


def test_the_ts_bound_is_the_receivers_clock() -> None:
    now = time.time()
    schema = _validator(event_schema(), now)
    for ts, ok in ((now + MAX_FUTURE_S, True), (math.nextafter(now + MAX_FUTURE_S, math.inf), False)):
        obj = {"user_id": "u", "song_id": "s", "ts": ts}
        assert schema.is_valid(obj) == ok == _accepts(lambda o: validate_event(o, now=now), obj)


def test_post_events_states_the_bound_it_applies() -> None:
    """POST /events checks ts against the hour-rounded clock, and its spec says so as a maximum."""
    t = 1_795_425_202.7
    assert receiver_clock(t) == 1_795_424_400.0 and ts_limit(t) == receiver_clock(t) + MAX_FUTURE_S
    body = events_body_schema(1000, t)
    assert body["maxItems"] == 1000 and body["items"]["properties"]["ts"]["maximum"] == ts_limit(t)
    item = {k: v for k, v in event_schema().items() if not k.startswith("$")}
    item["properties"]["ts"]["maximum"] = ts_limit(t)
    assert body["items"] == item


_features = st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.one_of(st.floats(allow_nan=False),
                                                                                 st.integers(), st.booleans(),
                                                                                 st.text(max_size=1)), max_size=3))
_songs = st.fixed_dictionaries({}, optional={
    "song_id": _ids, "title": st.one_of(st.text(max_size=3), st.none(), st.just("t" * 1025)),
    "artist": st.text(max_size=3), "genre": st.one_of(st.none(), st.text(max_size=3), st.integers()),
    "features": _features, "ts": _numbers})


@settings(max_examples=400, deadline=None)
@given(_songs)
def test_the_song_schema_and_the_validator_agree(obj: dict[str, Any]) -> None:
    now = 1.8e9
    raw = json.dumps(obj).encode()
    assert _validator_of("song.schema.json", now).is_valid(obj) == _accepts(lambda r: parse_song(r, now=now), raw), obj


def song_schema_() -> dict[str, Any]:
    return all_schemas()["song.schema.json"]


def test_an_encoded_song_is_valid() -> None:
    song = Song("s1", "Title", "Artist", "rock", {"energy": 0.5}, 1.7e9)
    assert jsonschema_rs.validator_for(song_schema_()).is_valid(json.loads(encode_song(song)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=4), st.floats(allow_nan=True, allow_infinity=True),
                          st.one_of(st.none(), st.text(max_size=5))), max_size=5),
       st.one_of(st.none(), st.text(max_size=4)), st.sampled_from([None, "control", "treatment"]),
       st.one_of(st.none(), st.fixed_dictionaries({"event_id": st.one_of(st.none(), st.text(max_size=3)),
                                                   "ts": st.floats(0, 2e9), "produced_at": st.floats(0, 2e9)})))
def test_what_a_worker_writes_to_redis_is_valid_and_what_is_valid_reads_back(rows, user, arm, last) -> None:  # type: ignore[no-untyped-def]
    raw = encode_value(user, [r[0] for r in rows], np.array([r[1] for r in rows]), [r[2] for r in rows],
                       "20261123T101500123456Z-als", 1.79e9, last, arm)
    value = json.loads(raw)
    assert jsonschema_rs.validator_for(recs_value_schema()).is_valid(value), value
    recs = Recs.decode(raw)
    assert recs.song_ids == [r[0] for r in rows] and recs.arm == arm and recs.last_event == last


@pytest.mark.parametrize("value", [
    {"user_id": "u", "model_version": "v", "updated_at": 1.0, "last_event": None, "items": [{"song_id": "s"}]},
    {"user_id": "u", "model_version": "v", "updated_at": "now", "last_event": None, "items": []},
    {"user_id": "u", "model_version": "v", "updated_at": 1.0, "last_event": None, "items": [], "arm": "b"},
])
def test_the_recs_value_schema_refuses_what_readers_could_not_use(value: dict[str, Any]) -> None:
    assert not jsonschema_rs.validator_for(recs_value_schema()).is_valid(value)
