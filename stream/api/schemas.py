"""The read API's response shapes (also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

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
