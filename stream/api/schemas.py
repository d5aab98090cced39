"""The read API's response shapes (also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    model_version: str | None = Field(description="artifact version the list came from; `popularity` before any "
                                      "model; null when no worker has written anything yet")
    updated_at: float | None = Field(description="when the worker wrote the list (unix seconds); null when "
                                     "nothing has been written yet")
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


class RecsBatchOut(BaseModel):
    recs: list[RecsOut] = Field(description="one per user asked for, in the same order")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events produced to the events topic (key = user_id)")
    topic: str


class HiddenOut(BaseModel):
    song_id: str
    hidden: bool = Field(description="true: left out of every list from now on; false: allowed again")
    at: float = Field(description="when the request was recorded (unix seconds); workers apply it within a second")


class ForgottenOut(BaseModel):
    user_id: str
    at: float = Field(description="the tombstone's time: the user's events up to it are void, later ones start a "
                                  "new history")
    lists_deleted: int = Field(description="Redis lists deleted (0 or 1)")
    events_purged: int = Field(description="events removed from the log's segments")
    segments_rewritten: int = Field(description="log segments rewritten without them")


class ItemError(BaseModel):
    index: int = Field(description="position of the refused item in the request's array")
    reason: str


class ErrorOut(BaseModel):
    error: str
    items: list[ItemError] | None = Field(None, description="each refused item of a batch request, with its reason")


class WorkerOut(BaseModel):
    worker: str = Field(description="the process: <worker_id>-<pid>")
    worker_id: str = Field(description="the worker's stable name (MUSICREC_WORKER_ID or its host name)")
    started_at: float
    version: str | None
    events: int
    refused: int
    users: int
    batches: int
    last_batch_ms: float
    updated_at: float
    age_s: float
    events_per_s: float
    stale: bool


class RedisState(BaseModel):
    ok: bool
    error: str | None


class HealthModel(BaseModel):
    published: str | None
    served: str | None = Field(description="the version the API's similar-songs index serves")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    problems: list[str]
    redis: RedisState
    model: HealthModel
    workers: list[WorkerOut]


class ArmOut(BaseModel):
    served: float
    plays: float
    hits: float
    hit_rate: float


class AbOut(BaseModel):
    running: bool
    error: str | None = None
    treatment: str | None = None
    share: float | None = None
    horizon: int | None = None
    salt: str | None = None
    started_at: float | None = None
    control: list[str] | None = Field(None, description="versions the control arm is served from")
    arms: dict[str, ArmOut] | None = None
    lift: float | None = Field(None, description="treatment / control hit rate")


class FreshnessOut(BaseModel):
    p50_s: float | None
    p99_s: float | None
    samples: int
    window_s: float


class LagOut(BaseModel):
    available: bool
    total: int | None
    error: str | None
    partitions: dict[str, int]


class OverviewModel(BaseModel):
    published: str | None
    metrics: dict[str, Any] = Field(description="the published version's manifest metrics (gate figures)")
    served: str | None
    kind: str | None
    index_songs: int | None
    created_at: float | None


class HistoryOut(BaseModel):
    span_s: float
    bucket_s: float
    t: list[float] = Field(description="bucket starts, unix seconds, oldest first")
    events_per_s: list[float]
    freshness_p50_s: list[float | None]
    freshness_p99_s: list[float | None]


class OverviewOut(BaseModel):
    taken_at: float
    now: float
    redis: RedisState
    events_per_s: float
    dlq: int
    freshness: FreshnessOut
    lag: LagOut
    workers: list[WorkerOut]
    model: OverviewModel
    report: dict[str, bool]
    ab: AbOut
    history: HistoryOut = Field(description="events/s and freshness over the last 15 minutes")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Every status a route can answer besides its success, by route family (the OpenAPI spec lists them all)
Responses = dict[int | str, dict[str, Any]]
BAD_ID: Responses = {400: _err("malformed id (the event contract's id rules)")}
OUT_OF_RANGE: Responses = {422: _err("parameter out of range or of the wrong type")}
UNAVAILABLE: Responses = {503: _err("Redis (or Kafka, for POST /events) unreachable, or the data directory not "
                                   "writable (removals)")}
UNAUTHORIZED: Responses = {401: _err("missing or wrong API key (only when MUSICREC_API_KEY is set)")}
TOO_LARGE: Responses = {413: _err("request body larger than the limit (2 KiB per allowed item, at least 1 MiB)")}
BAD_BODY: Responses = {400: _err("request refused whole: malformed JSON, more items than MUSICREC_API_MAX_BATCH, or "
                                 "each bad item's index and reason")}
ERRORS: Responses = {**BAD_ID, **OUT_OF_RANGE, **UNAVAILABLE}
