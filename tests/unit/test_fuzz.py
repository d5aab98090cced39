"""Bad input never gets in and never stops the worker.

Unit level: hypothesis drives ``stream.events`` with malformed and valid messages and compares each
verdict with an independent oracle of the README's contract (``tests.fuzz.oracle``).
End to end: >= 10,000 malformed messages mixed with valid ones go through the real broker to a real
worker; every bad one reaches the dead-letter topic with a reason, every good one the event log
exactly once, and the worker's counters add up.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream.events import InvalidEvent, parse_event, parse_events, parse_song
from tests.fuzz import fuzz_corpus, messages, oracle

NOW = 1_800_000_000.0
N_BAD, N_GOOD, N_HUGE = 10_000, 4_000, 3


@settings(max_examples=3000, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages(NOW))
# each of these once escaped as something other than InvalidEvent (and crashed the worker's batch)
# or was accepted although the log cannot store it
@example((b"a\xed\xa0\x80", b'{"user_id":"a\\ud800","song_id":"s","ts":1}'))  # lone surrogate, with key
@example((None, b'{"user_id":"u","song_id":"\\udfff","ts":1}'))  # lone surrogate, no key
@example((None, b'{"user_id":"u","song_id":"s","ts":1,"event":["play"]}'))  # unhashable event
@example((None, b'{"user_id":"u","song_id":"s","ts":' + b"9" * 400 + b"}"))  # int beyond float
@example((None, b'{"user_id":"u","song_id":"s","ts":' + b"1" * 5000 + b"}"))  # beyond int digits limit
@example((None, b'{"user_id":"u","song_id":"s","ts":1,"ms_played":' + b"9" * 400 + b"}"))
@example((None, b'{"user_id":"u","song_id":"s\xc2\x85","ts":1}'))  # C1 control character (NEL)
def test_parse_event_refuses_exactly_what_the_contract_refuses(message: tuple[bytes | None, bytes | None]) -> None:
    key, value = message
    expected = oracle(value, key, NOW)
    try:
        ev = parse_event(value if value is not None else b"", key, now=NOW)
    except InvalidEvent as exc:
        assert exc.reason, "a refusal names its reason"
        assert not expected, f"refused a valid message: {exc.reason}: {value[:200]!r}"
        return
    assert expected, f"accepted an invalid message: {value[:200]!r} key={key!r}"
    obj = json.loads(value)  # type: ignore[arg-type]
    assert (ev.user_id, ev.song_id) == (obj["user_id"], obj["song_id"])
    assert math.isfinite(ev.ts) and 0 <= ev.ts <= NOW + 86400
    # whatever is accepted can be stored: the log's Parquet strings and the Redis keys need UTF-8
    for text in (ev.user_id, ev.song_id, ev.event_id or ""):
        text.encode("utf-8")


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(NOW), min_size=1, max_size=30))
def test_a_batch_splits_into_accepted_and_refused(batch: list[tuple[bytes | None, bytes | None]]) -> None:
    keys, values = [k for k, _ in batch], [v for _, v in batch]
    res = parse_events(values, keys, [f"t/0/{i}" for i in range(len(batch))], now=NOW)
    refused = [i for i, _ in res.refused]
    assert sorted([*res.positions.tolist(), *refused]) == list(range(len(batch))), "every message gets a verdict"
    assert [oracle(v, k, NOW) for k, v in batch] == [i in set(res.positions.tolist()) for i in range(len(batch))]


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.none(),
                                                      st.booleans()), max_size=6),
       st.sampled_from([b"", b"a\\ud800", b"ok"]))
def test_parse_song_accepts_only_finite_numeric_features(features: dict[str, object], title: bytes) -> None:
    raw = (b'{"song_id":"s1","title":"' + title + b'","artist":"a","ts":1700000000,"features":'
           + json.dumps(features).encode() + b"}")
    finite = all(isinstance(v, int | float) and not isinstance(v, bool) and abs(float(v)) < math.inf
                 for v in features.values() if not (isinstance(v, int) and abs(v) > 1e300))
    huge_int = any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1e300 for v in features.values())
    try:
        song = parse_song(raw, b"s1", now=NOW)
    except InvalidEvent:
        assert not finite or huge_int or title == b"a\\ud800"
        return
    assert finite and not huge_int and title != b"a\\ud800"
    assert all(math.isfinite(v) for v in song.features.values())


def test_the_corpus_is_what_it_claims() -> None:
    """The end-to-end corpus's labels agree with the oracle, and it holds every family of damage."""
    now = time.time()
    corpus = fuzz_corpus(N_BAD, N_GOOD, now, seed=7, n_huge=N_HUGE)
    assert sum(not m.valid for m in corpus) == N_BAD and sum(m.valid for m in corpus) == N_GOOD
    wrong = [m for m in corpus if oracle(m.value, m.key, now) != m.valid]
    assert not wrong, [(m.kind, (m.value or b"")[:80]) for m in wrong[:5]]
    kinds = Counter(m.kind.split(" ")[0] for m in corpus if not m.valid)
    assert len(kinds) >= 15, kinds
    assert sum(len(m.value or b"") >= 1_000_000 for m in corpus) == N_HUGE
