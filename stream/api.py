"""The read API and the live dashboard (FastAPI): ``create_app(settings)``, ``serve(settings, ...)``.

Recommendations are read from Redis as the workers wrote them; similar songs come from the
published model version, loaded by this process and swapped when the pointer moves; health and
Prometheus metrics come from a background :class:`stream.monitor.Monitor`. Everything an app needs
lives on ``app.state.musicrec``, so two apps in one process (tests) never share anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import duckdb
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from index_manager.errors import ConfigError, InvalidEvent, NoModel, ServiceUnavailable
from offline.eventlog import EventLog
from stream.events import MAX_ID_CHARS, check_id
from stream.monitor import STATS_STALE_S, Monitor, RedisHandle, render_prometheus
from stream.redis_store import Recs, RecsClient, RedisKeys, translate_errors
from stream.settings import Settings, StreamConfig

log = logging.getLogger("musicrec.api")

MAX_K = 100  # per request; a stored list holds MUSICREC_K songs, so k above that returns them all
MAX_EVENTS = 200
POLL_S = 1.0  # background pass over Redis (worker stats, freshness sample); the dashboard polls as often
LAG_POLL_S = 5.0  # consumer lag: two Kafka round trips, and lag moves slower than the dashboard polls
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


# -- response shapes (also the OpenAPI schema) ----------------------------------------------------
class RecItem(BaseModel):
    song_id: str
    score: float | None
    because: str | None = Field(None, description="why the song is recommended, e.g. the song it is close to")


class LastEvent(BaseModel):
    event_id: str | None = None
    ts: float | None = None
    produced_at: float | None = Field(None, description="Kafka timestamp of the latest event folded in")


class RecsOut(BaseModel):
    user_id: str = Field(description="the user asked for (also when the popularity list was served)")
    model_version: str = Field(description="artifact version the list came from; `popularity` before any model")
    updated_at: float = Field(description="when the worker wrote the list (unix seconds)")
    last_event: LastEvent | None
    fallback: bool = Field(description="true when the user has no list yet and popularity was served")
    arm: str | None = Field(None, description="A/B arm (control/treatment) that wrote the list; null outside a test")
    items: list[RecItem]


class SimilarItem(BaseModel):
    song_id: str
    score: float = Field(description="cosine similarity of the songs' factor vectors")


class SimilarOut(BaseModel):
    song_id: str
    model_version: str
    items: list[SimilarItem]


class LoggedEvent(BaseModel):
    song_id: str
    event: str
    ts: float
    ms_played: int | None
    event_id: str | None


class UserEventsOut(BaseModel):
    user_id: str
    events: list[LoggedEvent] = Field(description="newest first")


class ErrorOut(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed id"},
    422: {"model": ErrorOut, "description": "parameter out of range"},
    503: {"model": ErrorOut, "description": "Redis unreachable, or no model/list yet"},
}


# -- the app's state --------------------------------------------------------------------------------
@dataclass
class ApiState:
    settings: Settings
    redis: RedisHandle
    monitor: Monitor
    page: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def cfg(self) -> StreamConfig:
        return self.settings.stream

    def recs_client(self) -> RecsClient:
        return RecsClient(self.cfg.redis_url, self.cfg.redis_namespace, client=self.redis.get())

    def read_recs(self, user_id: str, k: int) -> tuple[Recs | None, str | None]:
        """The user's list and the A/B arm that wrote it (None outside a test, and for users
        served the popularity fallback). Workers assign arms when they write, so reads stay one GET."""
        recs = self.recs_client().get(user_id, k)
        return recs, None if recs is None or recs.fallback else recs.arm

    def ab_results(self) -> dict[str, Any]:
        from stream.abtest import current_test, results
        from stream.demo import worker_stats

        client, keys = self.redis.get(), RedisKeys(self.cfg.redis_namespace)
        with translate_errors("reading the A/B test"):
            return results(current_test(client, keys), worker_stats(client, keys))

    def report_path(self) -> Path:
        return Path(self.cfg.data_dir) / "reports" / "prequential.png"


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.musicrec
    return state


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


# -- handlers -------------------------------------------------------------------------------------
UserId = Annotated[str, PathParam(description=f"1..{MAX_ID_CHARS} characters, no control characters")]


def get_recs(request: Request, user_id: UserId,
             k: Annotated[int, Query(ge=1, le=MAX_K, description="songs to return")] = 10) -> RecsOut:
    """A user's current recommendations with explanations (popularity for users without a list)."""
    state = _state(request)
    check_id(user_id, "user_id")
    recs, arm = state.read_recs(user_id, k)
    if recs is None:
        raise ServiceUnavailable("no recommendations have been written yet (is a worker running?)")
    return RecsOut(**dict(recs.to_json(), user_id=user_id, arm=arm))


def get_similar(request: Request, song_id: Annotated[str, PathParam()],
                k: Annotated[int, Query(ge=1, le=MAX_K, description="songs to return")] = 10) -> SimilarOut:
    """Songs closest to a song in the published model version's factor space."""
    state = _state(request)
    check_id(song_id, "song_id")
    found, version = state.monitor.index.similar(song_id, k, depth=state.settings.model.candidates)
    if found is None:
        raise HTTPException(404, f"song {song_id!r} is not in model version {version}")
    return SimilarOut(song_id=song_id, model_version=version,
                      items=[SimilarItem(song_id=s.song_id, score=s.score) for s in found])


def get_user_events(request: Request, user_id: UserId,
                    n: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="events to return")] = 20
                    ) -> UserEventsOut:
    """A user's latest events from the event log (deduplicated), newest first."""
    state = _state(request)
    check_id(user_id, "user_id")
    sql = ("SELECT song_id, event, ts, ms_played, event_id FROM events WHERE user_id = ? "
           "ORDER BY ts DESC, ingested_at DESC LIMIT ?")
    for attempt in (1, 2):
        try:
            with closing(EventLog(state.cfg.log_dir).connect()) as con:
                rows = con.execute(sql, [user_id, n]).fetchall()
            break
        except duckdb.IOException as exc:
            # compaction may delete a segment between listing and reading; the next listing is whole
            if attempt == 2:
                raise ServiceUnavailable(f"the event log cannot be read ({exc})") from exc
    return UserEventsOut(user_id=user_id, events=[
        LoggedEvent(song_id=s, event=e, ts=t, ms_played=m, event_id=i) for s, e, t, m, i in rows])


def get_health(request: Request) -> JSONResponse:
    """Redis reachability, model versions and worker freshness. 503 when Redis is unreachable;
    ``degraded`` (200) when reads work but no worker is live or the index lags the pointer."""
    state = _state(request)
    snap = state.monitor.snapshot
    redis_error = None
    try:
        with translate_errors("pinging"):
            state.redis.get().ping()
    except ServiceUnavailable as exc:
        redis_error = str(exc)
    served = state.monitor.index.holder.version
    problems = []
    if redis_error:
        problems.append(redis_error)
    if not any(not w.stale for w in snap.workers):
        problems.append(f"no worker has published stats in the last {STATS_STALE_S:.0f} s")
    if snap.published_version is not None and served != snap.published_version:
        problems.append(f"similar songs serve {served}, the published version is {snap.published_version}")
    status = "unavailable" if redis_error else "degraded" if problems else "ok"
    body = {"status": status, "problems": problems,
            "redis": {"ok": redis_error is None, "error": redis_error},
            "model": {"published": snap.published_version, "served": served},
            "workers": [w.to_json() for w in snap.workers]}
    return JSONResponse(body, status_code=503 if redis_error else 200)


def get_metrics(request: Request) -> PlainTextResponse:
    """Prometheus text exposition: events/s, DLQ, consumer lag, freshness histogram, index."""
    monitor = _state(request).monitor
    text = render_prometheus(monitor.snapshot, monitor.index.holder.peek(), monitor.index)
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)


def get_ab(request: Request) -> dict[str, Any]:
    """The running A/B test (if any) and each arm's lists served, plays observed, hits and hit rate."""
    return _state(request).ab_results()


def get_overview(request: Request) -> dict[str, Any]:
    """Everything the dashboard's header shows, as one JSON object (the same data as /metrics)."""
    state = _state(request)
    snap = state.monitor.snapshot
    served = state.monitor.index.holder.peek()
    model: dict[str, Any] = {"published": snap.published_version, "metrics": snap.published_metrics,
                             "served": None, "kind": None, "index_songs": None, "created_at": None}
    if served is not None:
        model.update(served=served[1], kind=served[0].model.kind, index_songs=len(served[0].model.index),
                     created_at=served[0].created_at)
    return {"taken_at": snap.taken_at, "now": time.time(),
            "redis": {"ok": snap.redis_error is None, "error": snap.redis_error},
            "events_per_s": snap.events_per_s, "dlq": snap.refused, "freshness": snap.freshness.to_json(),
            "lag": snap.lag.to_json(), "workers": [w.to_json() for w in snap.workers], "model": model,
            "report": {"prequential_png": state.report_path().is_file()}, "ab": _ab_or_error(state)}


def _ab_or_error(state: ApiState) -> dict[str, Any]:
    try:
        return state.ab_results()
    except ServiceUnavailable as exc:
        return {"running": False, "error": str(exc)}


def get_report(request: Request) -> FileResponse:
    """The recall@10-over-time plot of the last prequential evaluation, if one was saved."""
    path = _state(request).report_path()
    if not path.is_file():
        raise HTTPException(404, f"no evaluation plot yet: `musicrec evaluate FILE --plot {path}` writes one")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})


def get_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_state(request).page, headers={"Cache-Control": "no-cache"})


# -- errors as JSON -------------------------------------------------------------------------------
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


# -- assembly -------------------------------------------------------------------------------------
def create_app(settings: Settings) -> FastAPI:
    """The read API and dashboard for ``settings`` (Redis, data dir, topics, namespace)."""
    handle = RedisHandle(settings.stream.redis_url)
    page = resources.files("stream").joinpath("dashboard/index.html").read_text(encoding="utf-8")
    state = ApiState(settings, handle, Monitor(settings, handle), page)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = state.monitor
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
            await asyncio.to_thread(monitor.close)

    app = FastAPI(title="musicrec read API", version="1", lifespan=lifespan,
                  description="Recommendations, similar songs, health, Prometheus metrics and a live dashboard.")
    app.state.musicrec = state
    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        HTTPException: _http_error, RequestValidationError: _validation_error, InvalidEvent: _bad_input,
        ServiceUnavailable: _unavailable, NoModel: _unavailable}
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    # :path converters: an id may contain "/" (sent percent-encoded); check_id decides what is valid
    app.add_api_route("/recs/{user_id:path}", get_recs, methods=["GET"], responses=ERRORS, tags=["read"])
    app.add_api_route("/similar/{song_id:path}", get_similar, methods=["GET"], tags=["read"],
                      responses={**ERRORS, 404: {"model": ErrorOut, "description": "song not in the model"}})
    app.add_api_route("/users/{user_id:path}/events", get_user_events, methods=["GET"], responses=ERRORS,
                      tags=["read"])
    app.add_api_route("/health", get_health, methods=["GET"], tags=["ops"])
    app.add_api_route("/metrics", get_metrics, methods=["GET"], tags=["ops"], response_class=PlainTextResponse)
    app.add_api_route("/ab", get_ab, methods=["GET"], tags=["ops"], responses=ERRORS)
    app.add_api_route("/overview", get_overview, methods=["GET"], tags=["ops"])
    app.add_api_route("/reports/prequential.png", get_report, methods=["GET"], tags=["ops"],
                      response_class=FileResponse)
    app.add_api_route("/", get_page, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/dashboard", StaticFiles(packages=[("stream", "dashboard")]), name="dashboard")
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve :func:`create_app` with uvicorn until Ctrl-C (one process: the app owns its state)."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be within 0..65535, got {port}")
    app = create_app(settings)
    log.info("read API on http://%s:%d (dashboard at /, OpenAPI at /docs)", host, port)
    # access_log off: the dashboard polls several endpoints every second
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
