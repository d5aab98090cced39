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

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from index_manager.errors import InvalidEvent
from offline.catalog import CatalogStore
from offline.eventlog import EventLog
from stream.events import MAX_MESSAGE_BYTES, parse_event, parse_events, parse_song
from stream.kafka_io import client_config, ensure_topics, read_topic
from stream.pipeline import REASON_HEADER, SOURCE_HEADER, TRUNCATED_HEADER
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


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_ten_thousand_bad_messages_reach_the_dlq_and_every_good_one_the_log_once(
        make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(factors=8)
    cfg = settings.stream
    ensure_topics(cfg)
    worker = start_worker(settings)
    worker.wait_ready()
    now = time.time()
    corpus = fuzz_corpus(N_BAD, N_GOOD, now, seed=7, n_huge=N_HUGE)
    # ~1 MB values: the test's producer must be allowed to send them (kafka-python's default is 1 MB)
    producer = KafkaProducer(**client_config(cfg), max_request_size=4 << 20, linger_ms=20, acks=1)
    t0 = time.monotonic()
    for m in corpus:
        producer.send(cfg.events_topic, key=m.key, value=m.value)
    producer.flush(60)
    producer.close()
    stats = worker.wait(lambda s: s["events"] + s["refused"] >= len(corpus), 120, "every message to be handled")
    took = time.monotonic() - t0
    assert worker.alive()
    assert stats["refused"] == N_BAD and stats["events"] == N_GOOD and stats["duplicates"] == 0, stats
    assert stats["users"] == len({m.user_id for m in corpus if m.valid})

    logged = EventLog(cfg.log_dir).read()
    ids = list(logged.event_ids)
    assert len(ids) == len(set(ids)) == N_GOOD, "each valid event is in the log once"
    assert set(ids) == {m.event_id for m in corpus if m.valid}

    dead = read_topic(cfg, cfg.dlq_topic, timeout=60)
    assert len(dead) == N_BAD
    # original bytes kept (a message without a value is dead-lettered with an empty one)
    assert Counter(d.value for d in dead) == Counter(m.value or b"" for m in corpus if not m.valid)
    assert all(d.headers.get(REASON_HEADER) and d.headers[SOURCE_HEADER].startswith(cfg.events_topic.encode())
               for d in dead)
    reasons = Counter(d.headers[REASON_HEADER].decode().split(" (")[0][:30] for d in dead)
    print(f"\nfuzz: {len(corpus)} produced ({N_BAD} bad, {N_GOOD} good, {N_HUGE} of ~1 MB) handled in {took:.1f}s; "
          f"log {len(ids)}, DLQ {len(dead)}, lost 0; {len(reasons)} distinct reasons")


@pytest.mark.slow
def test_catalog_messages_with_bad_features_are_refused_never_indexed(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    from stream.events import Song, encode_song
    from tests.streaming import publish_content_model

    settings = make_settings(factors=8)
    cfg = settings.stream
    version = publish_content_model(settings)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")

    def song(song_id: str, features: str) -> bytes:
        return (f'{{"song_id":"{song_id}","title":"t","artist":"a","genre":"odd","ts":{time.time()},'
                f'"features":{features}}}').encode()

    bad = {
        b"nan-x": song("nan-x", '{"x": NaN, "y": 0.1}'),  # raw JSON NaN, as a non-Python producer sends it
        b"inf-y": song("inf-y", '{"x": 0.1, "y": Infinity}'),
        b"neg-inf": song("neg-inf", '{"x": -Infinity, "y": 0.1}'),
        b"huge-int": song("huge-int", '{"x": ' + "9" * 400 + ', "y": 0.1}'),
        b"string-x": song("string-x", '{"x": "0.1", "y": 0.1}'),
        b"missing-y": song("missing-y", '{"x": 0.1}'),  # not the model's feature set
        b"other-set": song("other-set", '{"tempo": 120, "energy": 0.3}'),
        b"mb": song("mb", '{"x": 0.1, "y": 0.2, "pad": "' + "p" * 1_000_000 + '"}'),  # ~1 MB
        b"key-mismatch": song("someone-else", '{"x": 0.1, "y": 0.2}'),
    }
    # more than the worker's producer may send (8 MiB): dead-lettered truncated, with its size
    nine_mb = song("nine-mb", '{"x": 0.1, "y": 0.2, "pad": "' + "p" * 9_000_000 + '"}')
    good = Song("fresh", "New", "Someone", "odd", {"x": 0.1, "y": -0.2}, time.time())
    producer = KafkaProducer(**client_config(cfg), max_request_size=16 << 20, acks=1)
    for key, value in [*bad.items(), (b"nine-mb", nine_mb)]:
        producer.send(cfg.songs_topic, key=key, value=value)
    producer.send(cfg.songs_topic, key=b"fresh", value=encode_song(good))
    producer.flush(30)
    producer.close()
    stats = worker.wait(lambda s: s["songs"] + s["refused"] >= len(bad) + 2, 60, "the catalog messages")
    assert stats["refused"] == len(bad) + 1 and stats["songs"] == 1 and stats["songs_indexed"] == 1, stats
    assert worker.alive()
    dead = read_topic(cfg, cfg.dlq_topic, timeout=20)
    cut = [d for d in dead if TRUNCATED_HEADER in d.headers]
    assert len(cut) == 1 and cut[0].key == b"nine-mb" and cut[0].value == nine_mb[:MAX_MESSAGE_BYTES]
    assert cut[0].headers[TRUNCATED_HEADER] == str(len(nine_mb)).encode()
    dead = [d for d in dead if d not in cut]
    assert Counter(d.value for d in dead) == Counter(bad.values()), "original bytes, 1 MB one included"
    assert {d.key for d in dead} == set(bad)
    reasons = {d.key: d.headers[REASON_HEADER].decode() for d in dead}
    assert "NaN" in reasons[b"nan-x"] and "Infinity" in reasons[b"inf-y"]
    assert "features do not match" in reasons[b"missing-y"] and "features do not match" in reasons[b"other-set"]
    assert "larger than" in reasons[b"mb"]
    assert len(bad[b"mb"]) > MAX_MESSAGE_BYTES
    # nothing refused was stored in the catalog either (the next retrain would learn from it)
    stored = set(CatalogStore(cfg.catalog_dir).read().song_ids)
    assert "fresh" in stored and not stored & {k.decode() for k in bad} - {"key-mismatch"}
    assert "someone-else" not in stored
