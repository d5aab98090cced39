"""JSON Schemas of the wire and storage contracts, generated from the code that enforces them.

Three contracts leave this project for other languages: the listening event (``music.events``,
``POST /events``), the catalog message (``music.songs``) and the recommendation value a worker
stores in Redis. Their schemas are built here from the same limits the validators use
(``online_models.event_rules``, ``stream.events``, ``stream.redis_store``), written to
``docs/schemas/`` by ``python -m stream.contracts docs/schemas`` and checked against the validators
by ``tests/unit/test_contracts.py`` (which also fails when the files are stale).

One rule cannot be stated statically: ``ts`` may run at most ``MAX_FUTURE_S`` ahead of the
*receiver's* clock. The schemas carry it as ``x-max-ahead-of-receiver-s``; the read API's OpenAPI
spec, which is generated per clock hour, states it as a plain ``maximum`` (``stream.api.ingest``).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

from online_models.abtest import ARMS
from online_models.batch import KIND_OF
from online_models.event_rules import MAX_FUTURE_S, MAX_ID_CHARS, MAX_MS_PLAYED
from stream.events import MAX_FEATURES, MAX_MESSAGE_BYTES

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://musicrec.invalid/schemas/"  # a name, not a location: the files live in docs/schemas
FILES = {"event": "event.schema.json", "song": "song.schema.json", "recs_value": "recs-value.schema.json"}
FUTURE_KEYWORD = "x-max-ahead-of-receiver-s"


def _ranges(codes: list[int]) -> str:
    """A regex character-class body (\\uXXXX escapes, understood by ECMA-262 and Python) for ``codes``."""
    out, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        out.append(f"\\u{codes[i]:04x}" + (f"-\\u{codes[j]:04x}" if j > i else ""))
        i = j + 1
    return "".join(out)


def id_pattern() -> str:
    """What ``event_rules.id_problem`` accepts, as a regex: no control character (Unicode Cc) anywhere,
    and at least one character that is not whitespace (``str.strip`` semantics). Lone surrogates
    (refused too) are left out: in a JavaScript regex without the ``u`` flag, a class naming them
    would also refuse every character outside the BMP. They cannot be encoded as UTF-8 anyway."""
    bmp = range(0x10000)
    refused = [c for c in bmp if unicodedata.category(chr(c)) == "Cc"]
    blank = sorted(set(refused) | {c for c in bmp if chr(c).isspace()})
    allowed = f"[^{_ranges(refused)}]"
    return f"^{allowed}*[^{_ranges(blank)}]{allowed}*$"


def id_schema(what: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": id_pattern(),
            "description": f"{what}: 1..{MAX_ID_CHARS} characters, not only whitespace, no control characters, "
                           "valid UTF-8 (no lone surrogates)"}


def _ts_schema(what: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, FUTURE_KEYWORD: MAX_FUTURE_S,
            "description": f"{what}, unix seconds: finite, >= 0, at most {MAX_FUTURE_S:.0f} s ahead of the "
                           "receiver's clock"}


def event_schema() -> dict[str, Any]:
    """A listening event (``stream.events.validate_event``). Unknown properties are ignored."""
    return {
        "$schema": DRAFT, "$id": BASE_ID + FILES["event"], "title": "musicrec listening event",
        "description": f"Value of a message on the events topic (key = user_id, UTF-8), at most "
                       f"{MAX_MESSAGE_BYTES} bytes of JSON; also one item of POST /events. NaN and Infinity "
                       "are not JSON and are refused.",
        "type": "object",
        "required": ["user_id", "song_id", "ts"],
        "properties": {
            "user_id": id_schema("the listener"),
            "song_id": id_schema("the song"),
            "event": {"enum": sorted(KIND_OF), "default": "play", "description": "a full or partial play, or a skip"},
            "ts": _ts_schema("when it happened"),
            "ms_played": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_MS_PLAYED,
                          "description": "milliseconds played (a play counts fully from MUSICREC_FULL_PLAY_MS, "
                                         "proportionally below); null = unknown"},
            "event_id": {"anyOf": [id_schema("deduplication key"), {"type": "null"}],
                         "description": "deduplication key; null = the worker uses topic/partition/offset"},
        },
    }


def song_schema() -> dict[str, Any]:
    """A catalog message (``stream.events.parse_song``)."""
    text = {"type": "string", "maxLength": 4 * MAX_ID_CHARS}
    return {
        "$schema": DRAFT, "$id": BASE_ID + FILES["song"], "title": "musicrec catalog message",
        "description": f"Value of a message on the songs topic (key = song_id), at most {MAX_MESSAGE_BYTES} bytes "
                       "of JSON. A song whose features do not fit the served model's content projection is "
                       "refused by the worker (dead-letter topic).",
        "type": "object",
        "required": ["song_id"],
        "properties": {
            "song_id": id_schema("the song"),
            "title": {**text, "default": ""},
            "artist": {**text, "default": ""},
            "genre": {"type": ["string", "null"]},
            "features": {"type": ["object", "null"], "maxProperties": MAX_FEATURES,
                         "additionalProperties": {"type": "number"},
                         "description": "content features, name -> finite number (the audio features of the "
                                        "catalog the model was trained on)"},
            "ts": {**_ts_schema("when the song was published"), "description": "unix seconds; default: receipt"},
            "hidden": {"type": "boolean",
                       "description": "true hides the song from every list (a takedown), false shows it again; "
                                      "a message of only song_id, hidden and ts changes nothing else"},
        },
    }


def recs_value_schema() -> dict[str, Any]:
    """The value of ``<ns>:recs:<user>`` and ``<ns>:popular`` (``stream.redis_store.encode_value``)."""
    return {
        "$schema": DRAFT, "$id": BASE_ID + FILES["recs_value"], "title": "musicrec recommendation value in Redis",
        "description": "Value of <ns>:recs:<percent-encoded user_id> (and of <ns>:popular, with user_id null), "
                       "written whole by a worker; readers GET it and parse JSON.",
        "type": "object",
        "required": ["user_id", "model_version", "updated_at", "last_event", "items"],
        "properties": {
            "user_id": {"type": ["string", "null"]},
            "model_version": {"type": "string", "description": "artifact version; 'popularity' before any model"},
            "updated_at": {"type": "number", "description": "when the worker wrote it, unix seconds"},
            "last_event": {
                "description": "the latest event folded in; null when the list was rewritten after a model swap",
                "anyOf": [{"type": "null"}, {
                    "type": "object", "required": ["event_id", "ts", "produced_at"],
                    "properties": {"event_id": {"type": ["string", "null"]}, "ts": {"type": "number"},
                                   "produced_at": {"type": "number",
                                                   "description": "Kafka timestamp of that event"}}}]},
            "arm": {"enum": list(ARMS), "description": "present only while an A/B test runs"},
            "items": {"type": "array", "items": {
                "type": "object", "required": ["song_id", "score", "because"],
                "properties": {"song_id": {"type": "string"}, "score": {"type": ["number", "null"]},
                               "because": {"type": ["string", "null"]}}}},
        },
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every published contract."""
    return {FILES["event"]: event_schema(), FILES["song"]: song_schema(),
            FILES["recs_value"]: recs_value_schema()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=True) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        (out / name).write_text(render(schema), encoding="utf-8")
        written.append(out / name)
    return written


if __name__ == "__main__":
    for path in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(path)
