"""The read API and the live dashboard (FastAPI): ``create_app(settings)``, ``serve(settings, ...)``.

Recommendations are read from Redis as the workers wrote them; similar songs come from the
published model version, loaded by this process and swapped when the pointer moves; health and
Prometheus metrics come from a background :class:`stream.api.monitor.Monitor`. Everything an app
needs lives on ``app.state.musicrec`` (:class:`stream.api.state.ApiState`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.convertors import CONVERTOR_TYPES, PathConvertor
from starlette.exceptions import HTTPException

from index_manager.holder import NoModel
from online_models.event_rules import MAX_ID_CHARS
from stream.api import ingest, routes
from stream.api.auth import key_guard
from stream.api.monitor import Monitor
from stream.api.prometheus import CONTENT_TYPE, ApiMetrics
from stream.api.schemas import (
    BAD_BODY,
    BAD_ID,
    OUT_OF_RANGE,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    AbOut,
    ErrorOut,
    EventsAccepted,
    ForgottenOut,
    HealthOut,
    HiddenOut,
    OverviewOut,
    RecsBatchOut,
    Responses,
)
from stream.api.state import ApiState
from stream.errors import ConfigError, ServiceUnavailable
from stream.events import InvalidEvent
from stream.redis_store import LazyRedis
from stream.settings import Settings

log = logging.getLogger("musicrec.api")

POLL_S = 1.0  # background pass over Redis (worker stats, freshness sample); the dashboard polls as often
# The longest request head the spec allows: GET /recs/{user_id}?exclude=... with every id at its
# longest and percent-encoded (up to 12 bytes per character), plus room for headers. h11's default
# (16 KiB) refused such a documented request with a bare text/plain 400 (found by schemathesis).
MAX_REQUEST_HEAD_BYTES = 12 * (MAX_ID_CHARS + routes.MAX_EXCLUDE * (MAX_ID_CHARS + 1)) + (16 << 10)


def server_options() -> dict[str, Any]:
    """uvicorn options every server of this app uses (``serve`` and the tests')."""
    return {"h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES}


LAG_POLL_S = 5.0  # consumer lag: two Kafka round trips, and lag moves slower than the dashboard polls


async def _every(seconds: float, what: str, fn: Callable[[], object]) -> None:
    """Run blocking ``fn`` in a thread every ``seconds`` until cancelled."""
    last_error = None
    while True:
        try:
            await asyncio.to_thread(fn)
            last_error = None
        except ServiceUnavailable as exc:
            if str(exc) != last_error:  # once per outage, not once per second
                log.warning("background %s: %s", what, exc)
            last_error = str(exc)
        except Exception:  # one failed pass (a disk error, a bug) must not stop the next ones
            log.exception("background %s failed", what)
        await asyncio.sleep(seconds)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return JSONResponse({"error": "; ".join(parts)}, status_code=422)


async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


class IdConvertor(PathConvertor):
    """Starlette's ``path`` matches ``.*``, which stops at a newline: an id holding one would be a
    404 from the router instead of the 400 that ``check_id`` gives every other bad id."""

    regex = "(?s:.*)"


def create_app(settings: Settings) -> FastAPI:
    """The read API and dashboard for ``settings`` (Redis, data dir, topics, namespace, API key)."""
    handle = LazyRedis(settings.stream.redis_url, settings.stream.redis_cluster)
    try:  # a malformed URL fails now (ConfigError); an unreachable Redis is only reported
        handle.get()
    except ServiceUnavailable as exc:
        log.warning("%s; serving 503 until it is back", exc)
    page = resources.files("stream.api").joinpath("dashboard/index.html").read_text(encoding="utf-8")
    monitor = Monitor(settings, handle)
    state = ApiState(settings, handle, monitor, page, ApiMetrics(lambda: monitor.snapshot, monitor.index))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loops: list[tuple[float, str, Callable[[], object]]] = [
            (POLL_S, "poll", monitor.poll), (settings.stream.model_poll, "model load", monitor.follow_model),
            (LAG_POLL_S, "lag probe", monitor.measure_lag)]
        state.tasks = [asyncio.create_task(_every(s, what, fn)) for s, what, fn in loops]
        try:
            yield
        finally:
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            await asyncio.to_thread(state.close)

    CONVERTOR_TYPES.setdefault("id", IdConvertor())  # Starlette's registry: adding it twice is a no-op
    app = FastAPI(title="musicrec read API", version="1", lifespan=lifespan,
                  description="Recommendations, similar songs, HTTP ingestion, health, Prometheus metrics and a "
                              "live dashboard. With MUSICREC_API_KEY set, every operation but /health and "
                              "/metrics needs `Authorization: Bearer <key>`.")
    app.state.musicrec = state
    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        HTTPException: _http_error, RequestValidationError: _validation_error, InvalidEvent: _bad_input,
        ServiceUnavailable: _unavailable, NoModel: _unavailable}
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    _add_routes(app, settings)
    _hourly_spec(app, settings.stream.api_max_batch)
    app.add_api_route("/", routes.get_page, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/dashboard", StaticFiles(packages=[("stream.api", "dashboard")]), name="dashboard")
    return app


def _add_routes(app: FastAPI, settings: Settings) -> None:
    key = settings.stream.api_key
    try:
        guard = [key_guard(key)] if key else []
    except ValueError as exc:
        raise ConfigError(f"MUSICREC_API_KEY: {exc}") from exc
    locked: Responses = UNAUTHORIZED if key else {}
    max_batch = settings.stream.api_max_batch

    def add(path: str, endpoint: Callable[..., Any], tag: str, responses: dict[int | str, dict[str, Any]],
            method: str = "GET", open_: bool = False, **kw: Any) -> None:
        app.add_api_route(path, endpoint, methods=[method], tags=[tag], dependencies=[] if open_ else guard,
                          responses={**responses, **({} if open_ else locked)}, **kw)

    # :id converters (any text, newlines too): an id may contain "/" (sent percent-encoded);
    # check_id decides what is valid
    # /recs/batch before /recs/{user_id}: a POST-only path must answer other methods with Allow: POST
    add("/recs/batch", ingest.post_recs_batch, "read", {**BAD_BODY, **TOO_LARGE, **OUT_OF_RANGE, **UNAVAILABLE},
        method="POST", response_model=RecsBatchOut, openapi_extra=ingest.request_body(
            ingest.recs_batch_body_schema(max_batch)))
    add("/recs/{user_id:id}", routes.get_recs, "read", {**BAD_ID, **OUT_OF_RANGE, **UNAVAILABLE})
    add("/similar/{song_id:id}", routes.get_similar, "read", {
        **BAD_ID, **OUT_OF_RANGE, **UNAVAILABLE,
        404: {"model": ErrorOut, "description": "song not in the published version, hidden, or no version published"}})
    add("/users/{user_id:id}/events", routes.get_user_events, "read", {**BAD_ID, **OUT_OF_RANGE, **UNAVAILABLE})
    # DELETE /users/{id}/events is not a forget of user "{id}/events" (the :id converter would say so)
    app.add_api_route("/users/{user_id:id}/events", routes.not_allowed(["GET"]), methods=["DELETE"],
                      include_in_schema=False)
    add("/users/{user_id:id}", routes.forget_user, "removals", {**BAD_ID, **UNAVAILABLE}, method="DELETE",
        response_model=ForgottenOut)
    add("/songs/{song_id:id}/hide", routes.hide_song, "removals", {**BAD_ID, **UNAVAILABLE}, method="POST",
        response_model=HiddenOut)
    add("/songs/{song_id:id}/unhide", routes.unhide_song, "removals", {**BAD_ID, **UNAVAILABLE}, method="POST",
        response_model=HiddenOut)
    add("/events", ingest.post_events, "ingest", {**BAD_BODY, **TOO_LARGE, **UNAVAILABLE}, method="POST",
        status_code=202, response_model=EventsAccepted,
        openapi_extra=ingest.request_body(ingest.events_body_schema(max_batch)))
    add("/health", routes.get_health, "ops", {503: {"model": HealthOut, "description": "Redis unreachable"}},
        open_=True, response_model=HealthOut)
    add("/metrics", routes.get_metrics, "ops", {200: {"content": {CONTENT_TYPE.split(";")[0]: {
        "schema": {"type": "string"}}}, "description": "Prometheus text exposition 0.0.4"}},
        open_=True, response_class=PlainTextResponse)
    add("/ab", routes.get_ab, "ops", UNAVAILABLE, response_model=AbOut, response_model_exclude_unset=True)
    add("/overview", routes.get_overview, "ops", {}, response_model=OverviewOut, response_model_exclude_unset=True)
    add("/reports/prequential.png", routes.get_report, "ops", {
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
              "description": "the plot"},
        404: {"model": ErrorOut, "description": "no evaluation plot saved yet"}}, response_class=FileResponse)


def _hourly_spec(app: FastAPI, max_batch: int) -> None:
    """Regenerate the OpenAPI spec when the hour turns: POST /events states its ``ts`` bound as a
    plain ``maximum`` from the API's hour-rounded clock (see ``stream.api.ingest``)."""
    generate = app.openapi
    cached: dict[float, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        hour = ingest.receiver_clock()
        if hour not in cached:
            app.openapi_schema = None
            spec = generate()
            body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = ingest.events_body_schema(max_batch, hour)
            cached.clear()
            cached[hour] = spec
        return cached[hour]

    app.openapi = openapi  # type: ignore[method-assign]


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve :func:`create_app` with uvicorn until Ctrl-C (one process: the app owns its state)."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be within 0..65535, got {port}")
    app = create_app(settings)
    log.info("read API on http://%s:%d (dashboard at /, OpenAPI at /docs)", host, port)
    # access_log off: the dashboard polls several endpoints every second
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, **server_options())
