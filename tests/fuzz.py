"""Malformed and valid wire messages for the fuzz tests, and an independent oracle of the contract.

Two generators share the same families of damage:

* :func:`messages` is a hypothesis strategy (unit tests of ``stream.events``, shrinking);
* :func:`fuzz_corpus` is a seeded, deterministic corpus of any size for the end-to-end test (one
  producer, one worker run: hypothesis examples against a broker would cost seconds each).

:func:`oracle` re-states the README's contract from scratch (it does not call ``stream.events``).
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

MAX_MESSAGE_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_FUTURE_S = 86400.0
MAX_MS_PLAYED = 86_400_000


# -- the oracle ---------------------------------------------------------------------------------
class _Refused(Exception):
    pass


def _no_constants(name: str) -> Any:
    raise _Refused(name)


def _good_id(value: Any) -> bool:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        return False
    if any(unicodedata.category(c) == "Cc" for c in value):  # C0, DEL and C1 control characters
        return False
    try:
        value.encode("utf-8")  # a lone surrogate escape (\\ud800) is not a character
    except UnicodeEncodeError:
        return False
    return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def oracle(raw: bytes | None, key: bytes | None, now: float) -> bool:
    """Is this a valid listening event per the README's contract?"""
    if raw is None or len(raw) > MAX_MESSAGE_BYTES:
        return False
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError, _Refused):
        return False
    if not isinstance(obj, dict):
        return False
    if not (_good_id(obj.get("user_id")) and _good_id(obj.get("song_id"))):
        return False
    event = obj.get("event", "play")
    if not isinstance(event, str) or event not in ("play", "skip"):
        return False
    if "ts" not in obj:
        return False
    ts = _number(obj["ts"])
    if ts is None or ts < 0 or ts > now + MAX_FUTURE_S:
        return False
    if obj.get("ms_played") is not None:
        ms = _number(obj["ms_played"])
        if ms is None or not 0 <= ms <= MAX_MS_PLAYED:
            return False
    if obj.get("event_id") is not None and not _good_id(obj["event_id"]):
        return False
    # (fields the contract does not name are ignored, whatever they hold)
    return key is None or key == obj["user_id"].encode("utf-8")


# -- damage shared by both generators -------------------------------------------------------------
CONTROL_CHARS = [chr(c) for c in range(32)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
ODD_BUT_VALID_IDS = ["a:b", "x*", "{tag}", "../etc", "ünï©ødé", "音楽", "🎵", "user with spaces", "a" * MAX_ID_CHARS,
                     "%2F", "u\u200bzero-width", "'; DROP TABLE--", "recs:other"]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]


@dataclass(frozen=True)
class Message:
    key: bytes | None
    value: bytes | None
    valid: bool
    event_id: str | None = None  # of a valid one
    user_id: str | None = None
    kind: str = ""  # what was done to it


def _dumps(obj: Any, ascii: bool = False) -> bytes:
    """Compact JSON; non-ASCII as raw UTF-8 (a lone surrogate becomes invalid UTF-8) or, with
    ``ascii``, as \\u escapes (a lone surrogate stays valid JSON but is not a character)."""
    text = json.dumps(obj, ensure_ascii=ascii, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def valid_event(rng: random.Random, n: int, now: float, tag: str) -> dict[str, Any]:
    user = rng.choice(ODD_BUT_VALID_IDS) if rng.random() < 0.05 else f"u{rng.randrange(200)}"
    obj: dict[str, Any] = {"user_id": user, "song_id": f"s{rng.randrange(500)}",
                           "ts": now - rng.uniform(0, 30 * 86400), "event_id": f"{tag}-{n}"}
    if rng.random() < 0.8:
        obj["event"] = rng.choice(["play", "play", "skip"])
    if rng.random() < 0.7:
        obj["ms_played"] = rng.choice([None, rng.randrange(0, 400_000)])
    if rng.random() < 0.05:
        obj["ts"] = int(obj["ts"])
    if rng.random() < 0.05:
        obj["extra"] = {"ignored": [1, 2, 3]}  # unknown fields are allowed
    return obj


def _bad_event(rng: random.Random, now: float, huge: bool) -> tuple[bytes | None, bytes | None, str]:
    """One malformed message: (key, value, what is wrong)."""
    base = valid_event(rng, 0, now, "bad")
    base.pop("event_id")
    key: bytes | None = base["user_id"].encode()
    family = rng.randrange(16 if huge else 15)
    if family == 0:  # not JSON
        choice = rng.randrange(4)
        text = _dumps(base)
        value = [text[: rng.randrange(1, len(text) - 1)], b"{not json", bytes(rng.randrange(32, 127)
                 for _ in range(rng.randrange(1, 40))) + b"}", b"" if rng.random() < 0.5 else b"   "][choice]
        return key, value, "not JSON"
    if family == 1:  # JSON, but not an object
        return key, rng.choice([b"[1,2,3]", b"42", b'"play"', b"null", b"true", _dumps([base])]), "not an object"
    if family == 2:  # wrong types
        field, bad = rng.choice([("user_id", 7), ("user_id", ["u1"]), ("song_id", {"id": 1}), ("ts", "yesterday"),
                                 ("ts", True), ("ts", None), ("ms_played", "long"), ("ms_played", True),
                                 ("event", ["play"]), ("event", {"k": 1}), ("event", 1), ("event_id", 12),
                                 ("event_id", False)])
        base[field] = bad
        return key if field != "user_id" else None, _dumps(base), f"wrong type: {field}"
    if family == 3:  # missing fields
        field = rng.choice(["user_id", "song_id", "ts"])
        base.pop(field)
        return (key if field != "user_id" else None), _dumps(base), f"missing {field}"
    if family == 4:  # timestamps
        lit = rng.choice(["NaN", "Infinity", "-Infinity", "-1", "-1e-9", str(now + 2 * 86400), "1e400",
                          "9" * 400, "1" * 5000, "-0.5"])
        text = _dumps({**base, "ts": 0}).replace(b'"ts":0', b'"ts":' + lit.encode())
        return key, text, f"ts {lit[:12]}"
    if family == 5:  # ms_played
        lit = rng.choice(["-1", str(MAX_MS_PLAYED + 1), "NaN", "1e400", "9" * 400, "Infinity"])
        text = _dumps({**base, "ms_played": 0}).replace(b'"ms_played":0', b'"ms_played":' + lit.encode())
        return key, text, f"ms_played {lit[:12]}"
    if family == 6:  # invalid UTF-8 somewhere in the value
        text = _dumps(base)
        at = rng.randrange(len(text))
        return key, text[:at] + rng.choice(INVALID_UTF8) + text[at:], "invalid UTF-8"
    if family == 7:  # unknown event types
        base["event"] = rng.choice(["like", "PLAY", "Play", " play", "", "skip\x00", "stop", "pause"])
        return key, _dumps(base), "unknown event"
    if family == 8:  # empty or blank ids
        field = rng.choice(["user_id", "song_id", "event_id"])
        base[field] = rng.choice(["", " ", "\t", "   "])
        return (None if field == "user_id" else key), _dumps(base), f"empty {field}"
    if family == 9:  # control characters in ids
        field = rng.choice(["user_id", "song_id", "event_id"])
        c = rng.choice(CONTROL_CHARS)
        base[field] = f"id{c}x"
        return (base["user_id"].encode("utf-8") if field == "user_id" else key), _dumps(base), f"control in {field}"
    if family == 10:  # lone surrogate escapes (valid JSON, not a valid string)
        field = rng.choice(["user_id", "song_id", "event_id"])
        value = _dumps({**base, field: "PLACEHOLDER"}).replace(b"PLACEHOLDER", rng.choice(
            [b"a\\ud800", b"\\udfff", b"x\\ud83dy"]))
        return (None if field == "user_id" else key), value, f"lone surrogate in {field}"
    if family == 11:  # key not matching user_id
        return rng.choice([b"someone-else", base["user_id"].encode() + b" ", b"\xff\xfe", b""]), _dumps(base), \
            "key mismatch"
    if family == 12:  # too long ids
        field = rng.choice(["user_id", "song_id", "event_id"])
        base[field] = "x" * (MAX_ID_CHARS + 1 + rng.randrange(100))
        return (base["user_id"].encode() if field == "user_id" else key), _dumps(base), f"long {field}"
    if family == 13:  # nesting and tombstones
        if rng.random() < 0.5:
            depth = rng.choice([100, 5000, 20000])
            return key, b"[" * depth + b"]" * depth, "deep nesting"
        return key, None, "no value (tombstone)"
    if family == 14:  # just over the size limit
        base["pad"] = "p" * (MAX_MESSAGE_BYTES + 1 - len(_dumps(base)) + rng.randrange(0, 50))
        return key, _dumps(base), "over 64 KiB"
    # family 15: ~1 MB
    base["pad"] = "P" * (1_000_000 + rng.randrange(1000))
    return key, _dumps(base), "~1 MB"


def fuzz_corpus(n_bad: int, n_good: int, now: float, seed: int = 0, n_huge: int = 3, tag: str = "good"
                ) -> list[Message]:
    """``n_bad`` malformed messages (``n_huge`` of them ~1 MB) mixed with ``n_good`` valid ones with
    unique event ids, shuffled with a fixed seed."""
    rng = random.Random(seed)
    out: list[Message] = []
    for i in range(n_good):
        obj = valid_event(rng, i, now, tag)
        out.append(Message(obj["user_id"].encode(), _dumps(obj), True, obj["event_id"], obj["user_id"], "valid"))
    for i in range(n_bad):
        key, value, kind = _bad_event(rng, now, huge=i < n_huge)
        while i < n_huge and kind != "~1 MB":
            key, value, kind = _bad_event(rng, now, huge=True)
        out.append(Message(key, value, False, kind=kind))
    rng.shuffle(out)
    return out


# -- hypothesis strategies ------------------------------------------------------------------------
ids = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(ODD_BUT_VALID_IDS),
                st.sampled_from(CONTROL_CHARS).map(lambda c: f"a{c}b"), st.just(""), st.just(" "),
                st.just("x" * (MAX_ID_CHARS + 1)))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=5), inner,
                                                                                 max_size=3)), max_leaves=8)
timestamps = st.one_of(st.floats(min_value=0, max_value=2e9), st.integers(-10, 3_000_000_000),
                       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "9" * 400, "-0.0"]), json_values)


@st.composite
def messages(draw: st.DrawFn, now: float) -> tuple[bytes | None, bytes | None]:
    """(key, value) pairs: valid events, events with one or more damaged fields, and raw bytes."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(st.none() | st.binary(max_size=30)), draw(st.binary(max_size=200))
    if shape == 1:
        return None, draw(json_values.map(lambda v: _dumps(v)))
    obj: dict[str, Any] = {"user_id": draw(ids), "song_id": draw(ids),
                           "ts": draw(st.floats(min_value=0, max_value=now))}
    for name, strategy in (("event", st.sampled_from(["play", "skip"]) | json_values),
                           ("ms_played", st.none() | st.integers(0, MAX_MS_PLAYED) | json_values),
                           ("event_id", st.none() | ids | json_values)):
        if draw(st.booleans()):
            obj[name] = draw(strategy)
    literal_ts: str | None = None
    if shape in (2, 3):
        ts = draw(timestamps)
        if isinstance(ts, str) and not ts.startswith('"'):
            literal_ts = ts
        else:
            obj["ts"] = ts
    if shape == 4:
        obj.pop(draw(st.sampled_from(["user_id", "song_id", "ts"])))
    if shape == 5:
        obj[draw(st.sampled_from(["user_id", "song_id", "event_id", "x"]))] = draw(
            st.sampled_from(["a\ud800", "\udfff", "\ud83d"]))
    ascii = draw(st.booleans())
    value = _dumps(obj, ascii)
    if literal_ts is not None:
        value = _dumps({**obj, "ts": 0}, ascii).replace(b'"ts":0', b'"ts":' + literal_ts.encode())
    if shape == 6:
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.sampled_from(INVALID_UTF8)) + value[at:]
    if shape == 7:
        value = value[:draw(st.integers(0, max(0, len(value) - 1)))]
    if shape == 8:
        value = value[:-1] + b',"pad":"' + b"p" * MAX_MESSAGE_BYTES + b'"}'
    user = obj.get("user_id")
    key = user.encode("utf-8", "surrogatepass") if isinstance(user, str) else None
    if draw(st.integers(0, 9)) == 0:
        key = draw(st.none() | st.binary(max_size=10))
    return key, value
