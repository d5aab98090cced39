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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from index_manager.holder import NoModel
from stream.api import routes
from stream.api.monitor import Monitor
from stream.api.schemas import ERRORS, ErrorOut
from stream.api.state import ApiState
from stream.errors import ConfigError, ServiceUnavailable
from stream.events import InvalidEvent
from stream.redis_store import LazyRedis
from stream.settings import Settings

log = logging.getLogger("musicrec.api")

POLL_S = 1.0  # background pass over Redis (worker stats, freshness sample); the dashboard polls as often
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


def create_app(settings: Settings) -> FastAPI:
    """The read API and dashboard for ``settings`` (Redis, data dir, topics, namespace)."""
    handle = LazyRedis(settings.stream.redis_url)
    try:  # a malformed URL fails now (ConfigError); an unreachable Redis is only reported
        handle.get()
    except ServiceUnavailable as exc:
        log.warning("%s; serving 503 until it is back", exc)
    page = resources.files("stream.api").joinpath("dashboard/index.html").read_text(encoding="utf-8")
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
    app.add_api_route("/recs/{user_id:path}", routes.get_recs, methods=["GET"], responses=ERRORS, tags=["read"])
    app.add_api_route("/similar/{song_id:path}", routes.get_similar, methods=["GET"], tags=["read"],
                      responses={**ERRORS, 404: {"model": ErrorOut, "description": "song not in the model"}})
    app.add_api_route("/users/{user_id:path}/events", routes.get_user_events, methods=["GET"], responses=ERRORS,
                      tags=["read"])
    app.add_api_route("/health", routes.get_health, methods=["GET"], tags=["ops"])
    app.add_api_route("/metrics", routes.get_metrics, methods=["GET"], tags=["ops"], response_class=PlainTextResponse)
    app.add_api_route("/ab", routes.get_ab, methods=["GET"], tags=["ops"], responses=ERRORS)
    app.add_api_route("/overview", routes.get_overview, methods=["GET"], tags=["ops"])
    app.add_api_route("/reports/prequential.png", routes.get_report, methods=["GET"], tags=["ops"],
                      response_class=FileResponse)
    app.add_api_route("/", routes.get_page, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/dashboard", StaticFiles(packages=[("stream.api", "dashboard")]), name="dashboard")
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
