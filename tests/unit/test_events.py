"""The wire contract: what is accepted, what is refused and why."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from online_models.batch import PLAY, SKIP
from stream.events import InvalidEvent, encode_event, parse_event, parse_events, parse_song

NOW = 1_800_000_000.0


def msg(**fields: object) -> bytes:
    base: dict[str, object] = {"user_id": "u1", "song_id": "s1", "event": "play", "ts": NOW - 5,
                               "ms_played": 1000, "event_id": "e1"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_event() -> None:
    ev = parse_event(msg(), b"u1", now=NOW)
    assert (ev.user_id, ev.song_id, ev.kind, ev.ms_played, ev.event_id) == ("u1", "s1", PLAY, 1000.0, "e1")
    assert parse_event(msg(event="skip", ms_played=None), now=NOW).kind == SKIP
    assert math.isnan(parse_event(msg(ms_played=None), now=NOW).ms_played)


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1, 2]", "JSON object"),
    (msg(user_id=...), "user_id must be a string"),
    (msg(user_id=""), "user_id is empty"),
    (msg(user_id=7), "user_id must be a string"),
    (msg(song_id="a\x00b"), "control characters"),
    (msg(user_id="x" * 300), "longer than"),
    (msg(event="like"), "event must be"),
    (msg(ts=...), "ts is missing"),
    (msg(ts="yesterday"), "ts must be a number"),
    (msg(ts=True), "ts must be a number"),
    (msg(ts=-1), "negative"),
    (msg(ts=NOW + 10 * 86400), "future"),
    (b'{"user_id":"u1","song_id":"s1","ts":NaN}', "NaN"),
    (b'{"user_id":"u1","song_id":"s1","ts":Infinity}', "Infinity"),
    (msg(ms_played=-5), "ms_played"),
    (msg(ms_played="long"), "ms_played"),
    (msg(event_id=""), "event_id is empty"),
    (b"{" + b'"pad":"' + b"x" * 70000 + b'"}', "larger than"),
])
def test_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, now=NOW)
    assert reason in info.value.reason


def test_key_must_be_the_user() -> None:
    with pytest.raises(InvalidEvent, match="key"):
        parse_event(msg(), b"someone-else", now=NOW)


def test_batch_parsing_keeps_good_and_reports_bad_positions() -> None:
    values = [msg(), b"{", msg(user_id="u2", event_id=None), None]
    res = parse_events(values, [b"u1", b"x", b"u2", None], ["t/0/0", "t/0/1", "t/0/2", "t/0/3"], now=NOW)
    assert list(res.events.user_ids) == ["u1", "u2"]
    assert list(res.positions) == [0, 2]
    assert list(res.events.event_ids) == ["e1", "t/0/2"], "missing ids fall back to topic/partition/offset"
    assert [i for i, _ in res.refused] == [1, 3]
    assert isinstance(res.events.ts, np.ndarray)


def test_producer_side_encoding_validates() -> None:
    data = encode_event("u", "s", "skip", ts=1_700_000_000.0, ms_played=3)
    assert parse_event(data, b"u").kind == SKIP
    with pytest.raises(InvalidEvent):
        encode_event("", "s")


@pytest.mark.parametrize("features", [{"tempo": float("nan")}, {"tempo": "fast"}, [1, 2], {"x": True}])
def test_catalog_features_must_be_finite_numbers(features: object) -> None:
    raw = json.dumps({"song_id": "s", "title": "t", "artist": "a", "features": features, "ts": NOW},
                     allow_nan=True).encode()
    with pytest.raises(InvalidEvent):
        parse_song(raw, now=NOW)
    ok = json.dumps({"song_id": "s", "title": "t", "artist": "a", "features": {"tempo": 120}}).encode()
    assert parse_song(ok, b"s").features == {"tempo": 120.0}


def test_latency_window_keeps_the_most_recent_values() -> None:
    from stream.worker.stats import LatencyWindow

    window = LatencyWindow(size=100)
    assert window.percentiles_ms() == (0.0, 0.0, 0.0)
    window.add(np.full(150, 9.0))  # older than the window: overwritten below
    window.add(np.arange(1, 101) / 1000)  # 1..100 ms
    p50, p95, p99 = window.percentiles_ms()
    assert p50 == pytest.approx(50.5) and p95 == pytest.approx(95.05) and p99 == pytest.approx(99.01)
