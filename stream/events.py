"""The wire contract: JSON listening and catalog events, validated the same way by producer and worker.

Listening event (topic ``music.events``, key = user_id)::

    {"user_id": str, "song_id": str, "event": "play"|"skip", "ts": unix seconds,
     "ms_played": int|null, "event_id": str|null}

Catalog event (topic ``music.songs``, key = song_id)::

    {"song_id": str, "title": str, "artist": str, "genre": str?, "features": {name: float}?, "ts": float,
     "hidden": bool?}

or, to hide a song from every list (or show it again) without touching its catalog row::

    {"song_id": str, "hidden": bool, "ts": float?}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from online_models.batch import KIND_OF, EventBatch
from online_models.event_rules import MAX_ID_CHARS, finite, id_problem, ms_played_problem, text_problem, ts_problem

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FEATURES = 256


class InvalidEvent(ValueError):
    """A listening or catalog event does not satisfy the contract; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"JSON constant {name} is not allowed")


def check_id(value: Any, name: str) -> str:
    problem = id_problem(value, name)
    if problem is not None:
        raise InvalidEvent(problem)
    return value


def _check_text(value: str, name: str) -> None:
    problem = text_problem(value, name)
    if problem is not None:
        raise InvalidEvent(problem)


def _check_ts(value: Any, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"ts must be a number (unix seconds), got {type(value).__name__}")
    ts = finite(value)
    problem = ts_problem(ts, now)
    if problem is not None or ts is None:  # ts_problem names a missing ts itself
        raise InvalidEvent(str(problem))
    return ts


def decode_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity), any top-level value; InvalidEvent says what is wrong."""
    try:
        # orjson parses the common case ~10x faster than the json module; what it refuses (NaN,
        # lone surrogates, huge integers, deep nesting, bad bytes) gets the json module's exact verdict
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _decode_strictly(raw)


def _decode_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    obj = decode_json(raw)
    if not isinstance(obj, dict):
        raise InvalidEvent(f"message must be a JSON object, got {type(obj).__name__}")
    return obj


def _decode_strictly(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("message is not valid UTF-8") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"message is not JSON ({exc.msg} at char {exc.pos})") from exc
    except RecursionError as exc:
        raise InvalidEvent("message nests too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal longer than Python's 4300-digit limit
        raise InvalidEvent(f"message is not JSON ({str(exc)[:80]})") from exc


@dataclass
class ParsedEvent:
    user_id: str
    song_id: str
    kind: int
    ts: float
    ms_played: float
    event_id: str | None


def validate_event(obj: dict[str, Any], key: bytes | None = None, now: float | None = None) -> ParsedEvent:
    """Check one decoded event against the contract; raises InvalidEvent with the reason."""
    now = time.time() if now is None else now
    user = check_id(obj.get("user_id"), "user_id")
    song = check_id(obj.get("song_id"), "song_id")
    event = obj.get("event", "play")
    if not isinstance(event, str) or event not in KIND_OF:
        raise InvalidEvent(f"event must be 'play' or 'skip', got {str(event)[:40]!r}")
    if "ts" not in obj:
        raise InvalidEvent("ts is missing")
    ts = _check_ts(obj["ts"], now)
    ms = obj.get("ms_played")
    if ms is not None:
        ms = finite(ms)
        problem = ms_played_problem(ms)
        if problem is not None:
            raise InvalidEvent(problem)
    event_id = obj.get("event_id")
    if event_id is not None:
        event_id = check_id(event_id, "event_id")
    if key is not None and key != user.encode("utf-8"):
        raise InvalidEvent("message key must equal user_id (events are partitioned by user)")
    return ParsedEvent(user, song, KIND_OF[event], ts, math.nan if ms is None else float(ms), event_id)


def parse_event(raw: bytes, key: bytes | None = None, now: float | None = None) -> ParsedEvent:
    return validate_event(_decode_object(raw), key, now)


@dataclass
class ParseResult:
    """Valid events of a batch in arrival order, and the refused ones with their reasons."""

    events: EventBatch
    positions: np.ndarray  # index of each valid event in the input batch
    refused: list[tuple[int, str]] = field(default_factory=list)


def parse_events(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
                 fallback_ids: Sequence[str] | None = None, now: float | None = None) -> ParseResult:
    """Validate a micro-batch of raw messages. Messages without an event_id get ``fallback_ids[i]``
    (the worker passes ``topic/partition/offset``, stable across redeliveries)."""
    now = time.time() if now is None else now
    users: list[str] = []
    songs: list[str] = []
    kinds: list[int] = []
    ts: list[float] = []
    ms: list[float] = []
    ids: list[str | None] = []
    positions: list[int] = []
    refused: list[tuple[int, str]] = []
    for i, raw in enumerate(values):
        try:
            if raw is None:
                raise InvalidEvent("message has no value")
            ev = parse_event(raw, None if keys is None else keys[i], now)
        except InvalidEvent as exc:
            refused.append((i, exc.reason))
            continue
        users.append(ev.user_id)
        songs.append(ev.song_id)
        kinds.append(ev.kind)
        ts.append(ev.ts)
        ms.append(ev.ms_played)
        ids.append(ev.event_id if ev.event_id is not None
                   else (fallback_ids[i] if fallback_ids is not None else None))
        positions.append(i)
    batch = EventBatch(np.array(users, dtype=object), np.array(songs, dtype=object),
                       np.array(kinds, dtype=np.int8), np.array(ts, dtype=np.float64),
                       np.array(ms, dtype=np.float64), np.array(ids, dtype=object))
    return ParseResult(batch, np.array(positions, dtype=np.int64), refused)


def encode_event(user_id: str, song_id: str, event: str = "play", ts: float | None = None,
                 ms_played: int | None = None, event_id: str | None = None) -> bytes:
    """Serialise one listening event, validating it first (a producer never sends a bad one)."""
    obj = {"user_id": user_id, "song_id": song_id, "event": event,
           "ts": time.time() if ts is None else ts, "ms_played": ms_played, "event_id": event_id}
    validate_event(obj)
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_batch(batch: EventBatch) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) messages of a batch, validated one by one."""
    names = batch.event_names()
    for i in range(len(batch)):
        ms = batch.ms_played[i]
        yield batch.user_ids[i].encode("utf-8"), encode_event(
            batch.user_ids[i], batch.song_ids[i], names[i], float(batch.ts[i]),
            None if math.isnan(ms) else int(ms), batch.event_ids[i])


@dataclass
class Song:
    song_id: str
    title: str
    artist: str
    genre: str | None
    features: dict[str, float]
    ts: float
    hidden: bool | None = None  # a visibility request: true hides the song from every list, false shows it
    visibility_only: bool = False  # no catalog fields: only ``hidden`` (the row in the catalog is kept)


_VISIBILITY_FIELDS = {"song_id", "hidden", "ts"}


def parse_song(raw: bytes, key: bytes | None = None, now: float | None = None) -> Song:
    """Validate one catalog message; feature values must be finite numbers."""
    now = time.time() if now is None else now
    obj = _decode_object(raw)
    song = check_id(obj.get("song_id"), "song_id")
    title, artist = obj.get("title", ""), obj.get("artist", "")
    if not isinstance(title, str) or not isinstance(artist, str):
        raise InvalidEvent("title and artist must be strings")
    if len(title) > 4 * MAX_ID_CHARS or len(artist) > 4 * MAX_ID_CHARS:
        raise InvalidEvent("title or artist is too long")
    _check_text(title, "title")
    _check_text(artist, "artist")
    genre = obj.get("genre")
    if genre is not None and not isinstance(genre, str):
        raise InvalidEvent("genre must be a string or absent")
    if genre is not None:
        _check_text(genre, "genre")
    feats = obj.get("features") or {}
    if not isinstance(feats, dict):
        raise InvalidEvent("features must be an object of name -> number")
    if len(feats) > MAX_FEATURES:
        raise InvalidEvent(f"more than {MAX_FEATURES} features")
    clean: dict[str, float] = {}
    for name, value in feats.items():
        number = finite(value)
        if number is None:
            raise InvalidEvent(f"feature {str(name)[:40]!r} must be a finite number")
        _check_text(name, "a feature name")
        clean[str(name)] = number
    ts = _check_ts(obj.get("ts", now), now)
    if key is not None and key != song.encode("utf-8"):
        raise InvalidEvent("message key must equal song_id")
    hidden = obj.get("hidden")
    if hidden is not None and not isinstance(hidden, bool):
        raise InvalidEvent("hidden must be true, false or absent")
    return Song(song, title, artist, genre, clean, ts, hidden, hidden is not None and set(obj) <= _VISIBILITY_FIELDS)


def encode_song(song: Song) -> bytes:
    obj: dict[str, Any] = {"song_id": song.song_id, "title": song.title, "artist": song.artist,
                           "genre": song.genre, "features": song.features, "ts": song.ts}
    if song.visibility_only:
        obj = {"song_id": song.song_id, "hidden": bool(song.hidden), "ts": song.ts}
    elif song.hidden is not None:
        obj["hidden"] = song.hidden
    data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
    parse_song(data)
    return data
