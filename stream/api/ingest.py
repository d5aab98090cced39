"""Batch endpoints: ``POST /events`` (HTTP ingestion into Kafka) and ``POST /recs/batch``.

``POST /events`` takes a JSON array of listening events in the Kafka contract. Each item is
serialised and checked by ``stream.events.parse_event``, the worker's own parser, so the API
accepts exactly what a worker would learn from; one bad item refuses the whole request (400, every
bad item's index and reason) and nothing is produced. Accepted events go to the events topic keyed
by user_id, and the 202 is sent only once Kafka acknowledged all of them.

The event contract bounds ``ts`` relative to the receiver's clock (one day ahead). The API applies
that rule against its clock *rounded down to the hour* and states the resulting bound as a plain
``maximum`` in its OpenAPI spec, regenerated every hour: the spec then says exactly what the server
accepts, and the API is at most an hour stricter than the worker, never more lenient.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from online_models.event_rules import MAX_FUTURE_S
from stream.api.schemas import EventsAccepted, ItemError, RecsBatchOut, RecsOut
from stream.api.state import ApiState, state_of
from stream.contracts import event_schema, id_schema
from stream.events import InvalidEvent, check_id, decode_json, parse_event

CLOCK_STEP_S = 3600.0
BODY_BYTES_PER_ITEM = 2048  # a request may carry this much per allowed item (events are ~150 bytes)
MIN_BODY_BYTES = 1 << 20
MAX_PAGE = 100  # songs per user, as on GET /recs


def receiver_clock(now: float | None = None) -> float:
    """The clock POST /events checks ``ts`` against: now, rounded down to the hour."""
    t = time.time() if now is None else now
    return t - t % CLOCK_STEP_S


def ts_limit(now: float | None = None) -> float:
    return receiver_clock(now) + MAX_FUTURE_S


def body_limit(max_items: int) -> int:
    return max(MIN_BODY_BYTES, max_items * BODY_BYTES_PER_ITEM)


def events_body_schema(max_items: int, now: float | None = None) -> dict[str, Any]:
    item = {k: v for k, v in event_schema().items() if not k.startswith("$")}
    item["properties"]["ts"]["maximum"] = ts_limit(now)
    return {"type": "array", "maxItems": max_items, "items": item,
            "description": "listening events in the Kafka contract (docs/schemas/event.schema.json); ts at most "
                           "`maximum`, one day after the API's clock rounded down to the hour"}


def recs_batch_body_schema(max_items: int) -> dict[str, Any]:
    return {"type": "object", "required": ["user_ids"], "properties": {
        "user_ids": {"type": "array", "maxItems": max_items, "items": id_schema("a user")},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 10, "description": "songs per user"}}}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body is larger than {limit} bytes")
    try:
        return decode_json(bytes(body))
    except InvalidEvent as exc:
        raise HTTPException(400, f"request body: {exc.reason}") from exc


def _refused(what: str, bad: list[tuple[int, str]], total: int) -> JSONResponse:
    items = [ItemError(index=i, reason=r).model_dump() for i, r in bad]
    return JSONResponse({"error": f"{len(bad)} of {total} {what} refused; nothing was done", "items": items},
                        status_code=400)


def _check_count(items: Any, name: str, limit: int) -> list[Any]:
    if not isinstance(items, list):
        raise HTTPException(400, f"{name} must be a JSON array, got {type(items).__name__}")
    if len(items) > limit:
        # 400, not 413: the request is well within the byte limit, its content breaks a rule of the spec
        raise HTTPException(400, f"{len(items)} {name} in one request; at most {limit} (MUSICREC_API_MAX_BATCH)")
    return items


def _encode(item: Any) -> bytes:
    # json, not orjson: integers beyond 64 bits must reach parse_event, which gives the verdict; ASCII
    # escapes keep a lone surrogate as "\ud800", which parse_event refuses as the worker would
    return json.dumps(item, allow_nan=False, separators=(",", ":")).encode("ascii")


async def post_events(request: Request) -> EventsAccepted | JSONResponse:
    """Produce listening events to the events topic, keyed by user_id: all of them or none."""
    state = state_of(request)
    limit = state.cfg.api_max_batch
    items = _check_count(await _read_json(request, body_limit(limit)), "events", limit)
    now = receiver_clock()
    messages: list[tuple[bytes, bytes]] = []
    bad: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidEvent(f"an event must be a JSON object, got {type(item).__name__}")
            value = _encode(item)
            event = parse_event(value, now=now)
        except InvalidEvent as exc:
            bad.append((i, exc.reason))
            continue
        messages.append((event.user_id.encode("utf-8"), value))
    if bad:
        state.metrics.http_events.labels("refused").inc(len(items))
        return _refused("events", bad, len(items))
    if messages:
        await run_in_threadpool(_produce, state, messages)
    state.metrics.http_events.labels("accepted").inc(len(messages))
    return EventsAccepted(accepted=len(messages), topic=state.cfg.events_topic)


def _produce(state: ApiState, messages: list[tuple[bytes, bytes]]) -> None:
    state.producer().send_acknowledged(messages)


def _page(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k != int(k):
        raise HTTPException(422, f"k: must be an integer, got {json.dumps(k)[:40]}")
    if not 1 <= k <= MAX_PAGE:
        raise HTTPException(422, f"k: must be within 1..{MAX_PAGE}, got {int(k)}")
    return int(k)


async def post_recs_batch(request: Request) -> RecsBatchOut | JSONResponse:
    """Many users' lists in one Redis round trip; users without a list get the popularity fallback."""
    state = state_of(request)
    limit = state.cfg.api_max_batch
    body = await _read_json(request, body_limit(limit))
    if not isinstance(body, dict) or "user_ids" not in body:
        raise HTTPException(400, 'request body must be a JSON object {"user_ids": [...], "k": 10}')
    users = _check_count(body["user_ids"], "user_ids", limit)
    k = _page(body.get("k", 10))
    bad = []
    for i, user in enumerate(users):
        try:
            check_id(user, "user_id")
        except InvalidEvent as exc:
            bad.append((i, exc.reason))
    if bad:
        return _refused("user ids", bad, len(users))
    found = await run_in_threadpool(state.read_many, users, k)
    return RecsBatchOut(recs=[RecsOut(**r) for r in found])
