"""The read API's handlers: recommendations and similar songs, the event log, health, metrics, A/B."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from typing import Annotated, Any

import duckdb
import numpy as np
from fastapi import Path as PathParam
from fastapi import Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from index_manager.holder import NoModel
from index_manager.keys import song_keys
from offline.eventlog import EventLog
from online_models.event_rules import MAX_ID_CHARS
from stream.api.prometheus import CONTENT_TYPE
from stream.api.rates import STATS_STALE_S
from stream.api.schemas import (
    ForgottenOut,
    HiddenOut,
    LoggedEvent,
    RecsOut,
    SimilarItem,
    SimilarOut,
    UserEventsOut,
)
from stream.api.state import ApiState, recs_json, state_of
from stream.contracts import id_pattern
from stream.errors import ServiceUnavailable
from stream.events import check_id
from stream.redis_store import translate_errors
from stream.removals import forget_users, set_hidden

# songs per response: a stored list holds MUSICREC_K songs (so a larger k returns them all), and
# /similar searches the index once per request
MAX_PAGE = 100
MAX_EVENTS = 200

# the id rules of the event contract, stated in the spec (an id is one path segment or more: "/" is
# allowed and sent percent-encoded; "." and ".." cannot be sent in a URL path: use POST /recs/batch)
# (stated in the schema only: check_id enforces them, with the contract's reasons and a 400)
_ID = dict(json_schema_extra={"minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": id_pattern()},
           description=f"1..{MAX_ID_CHARS} characters, not only whitespace, no control characters; "
                       "percent-encoded in the path")
UserId = Annotated[str, PathParam(**_ID)]
SongId = Annotated[str, PathParam(**_ID)]
Page = Annotated[int, Query(ge=1, le=MAX_PAGE, description="songs to return")]


MAX_EXCLUDE = 100
Exclude = Annotated[str | None, Query(max_length=MAX_EXCLUDE * (MAX_ID_CHARS + 1), description=(
    f"comma-separated song ids (at most {MAX_EXCLUDE}) to leave out of this answer; the list is refilled from "
    "the rest of the user's stored candidates, then the popular list"))]


def get_recs(request: Request, user_id: UserId, k: Page = 10, exclude: Exclude = None) -> RecsOut:
    """A user's current recommendations with explanations (popularity for users without a list)."""
    state = state_of(request)
    check_id(user_id, "user_id")
    if exclude:
        songs = [s for s in exclude.split(",") if s]
        if len(songs) > MAX_EXCLUDE:
            raise HTTPException(422, f"exclude: at most {MAX_EXCLUDE} song ids, got {len(songs)}")
        return RecsOut(**recs_json(user_id, state.recs_client().get_excluding(user_id, k, set(songs))))
    recs, _ = state.read_recs(user_id, k)
    return RecsOut(**recs_json(user_id, recs))


def hide_song(request: Request, song_id: SongId) -> HiddenOut:
    """Hide a song from every list (a takedown, an expired licence): removed from the lists in Redis
    within seconds, left out of new lists and of similar songs, across restarts and retrains."""
    return _visibility(request, song_id, True)


def unhide_song(request: Request, song_id: SongId) -> HiddenOut:
    """Let a hidden song back into lists, as they are next written."""
    return _visibility(request, song_id, False)


def _visibility(request: Request, song_id: str, hidden: bool) -> HiddenOut:
    state = state_of(request)
    check_id(song_id, "song_id")
    at = set_hidden(state.cfg, [song_id], hidden)
    return HiddenOut(song_id=song_id, hidden=hidden, at=at)


def not_allowed(methods: list[str]) -> Callable[[], None]:
    """A handler answering 405 with ``Allow: methods``."""
    def refuse() -> None:
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": ", ".join(methods)})
    return refuse


def forget_user(request: Request, user_id: UserId) -> ForgottenOut:
    """Erase a user (a deletion request): their list, their events in the log, their online state in
    every worker within seconds, their row in every later model version. A tombstone keeps a replay
    of old events from bringing them back; events after this call start a new history."""
    state = state_of(request)
    check_id(user_id, "user_id")
    with translate_errors("forgetting a user"):
        done = forget_users(state.cfg, state.redis.get(), [user_id])
    return ForgottenOut(user_id=user_id, at=done.at, lists_deleted=done.lists_deleted,
                        events_purged=done.events_purged, segments_rewritten=done.segments_rewritten)


def get_similar(request: Request, song_id: SongId, k: Page = 10) -> SimilarOut:
    """Songs closest to a song in the published model version's factor space (404 before any version)."""
    state = state_of(request)
    check_id(song_id, "song_id")
    try:
        model, version = state.monitor.index.holder.get()  # one read: the song and its neighbours from one version
    except NoModel as exc:
        snap = state.monitor.snapshot
        if snap.redis_error is None and snap.published_version is None:  # known: nothing is published
            raise HTTPException(404, f"song {song_id!r} is not in any model: no version is published yet") from exc
        raise  # published but not loaded (yet, or refused): 503, the API's own state
    if model.index.rows(song_keys([song_id]))[0] < 0:
        raise HTTPException(404, f"song {song_id!r} is not in model version {version}")
    if state.hide_from(model).is_hidden(song_id):
        raise HTTPException(404, f"song {song_id!r} is hidden")
    found = model.similar(np.array([song_id], dtype=object), k, depth=state.settings.model.candidates)
    return SimilarOut(song_id=song_id, model_version=version,
                      items=[SimilarItem(song_id=str(s), score=float(v)) for s, v, _ in found.row(0)])


def get_user_events(request: Request, user_id: UserId,
                    n: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="events to return")] = 20
                    ) -> UserEventsOut:
    """A user's latest events from the event log (deduplicated), newest first."""
    state = state_of(request)
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
    state = state_of(request)
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
    """Prometheus text exposition 0.0.4: events/s, DLQ, consumer lag, freshness histogram, index,
    POST /events counts, and the API process's own metrics."""
    return PlainTextResponse(state_of(request).metrics.render(), media_type=CONTENT_TYPE)


def get_ab(request: Request) -> dict[str, Any]:
    """The running A/B test (if any) and each arm's lists served, plays observed, hits and hit rate."""
    return state_of(request).ab_results()


def get_overview(request: Request) -> dict[str, Any]:
    """Everything the dashboard's header shows, as one JSON object (the same data as /metrics)."""
    state = state_of(request)
    snap = state.monitor.snapshot
    served = state.monitor.index.holder.peek()
    model: dict[str, Any] = {"published": snap.published_version, "metrics": snap.published_metrics,
                             "served": None, "kind": None, "index_songs": None, "created_at": None}
    if served is not None:
        model.update(served=served.version, kind=served.model.kind, index_songs=len(served.model.index),
                     created_at=served.model.created_at)
    return {"taken_at": snap.taken_at, "now": time.time(),
            "redis": {"ok": snap.redis_error is None, "error": snap.redis_error},
            "events_per_s": snap.events_per_s, "dlq": snap.refused, "freshness": snap.freshness.to_json(),
            "lag": snap.lag.to_json(), "workers": [w.to_json() for w in snap.workers], "model": model,
            "report": {"prequential_png": state.report_path().is_file()}, "ab": _ab_or_error(state),
            "history": state.monitor.timeline.to_json()}


def _ab_or_error(state: ApiState) -> dict[str, Any]:
    try:
        return state.ab_results()
    except ServiceUnavailable as exc:
        return {"running": False, "error": str(exc)}


def get_report(request: Request) -> FileResponse:
    """The recall@10-over-time plot of the last prequential evaluation, if one was saved."""
    path = state_of(request).report_path()
    if not path.is_file():
        raise HTTPException(404, f"no evaluation plot yet: `musicrec evaluate FILE --plot {path}` writes one")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})


def get_page(request: Request) -> HTMLResponse:
    return HTMLResponse(state_of(request).page, headers={"Cache-Control": "no-cache"})
