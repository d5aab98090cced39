"""Hiding songs and forgetting users: what ``musicrec songs hide|unhide``, ``musicrec users forget``
and the API's ``POST /songs/{id}/hide`` and ``DELETE /users/{id}`` do.

Both are recorded in the data directory (``offline.removals``), which every worker follows every
second (``stream.worker.removals``). Forgetting also acts at once, before returning: the user's list
is deleted from Redis and every log segment holding their events is rewritten without them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis

from offline.compaction import purge_forgotten
from offline.eventlog import EventLog
from offline.removals import HiddenSongs
from stream.errors import ServiceUnavailable
from stream.events import check_id
from stream.redis_store import RecsWriter, RedisKeys
from stream.settings import StreamConfig


@contextmanager
def _data_dir(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:  # e.g. a read-only mount: the request is not recorded, say so
        raise ServiceUnavailable(f"the data directory cannot be written while {what} ({exc})") from exc


def set_hidden(cfg: StreamConfig, song_ids: list[str], hidden: bool) -> float:
    """Hide songs from every list (or show them again); returns the request's time. Workers apply
    it within a second."""
    if not song_ids:
        raise ValueError("no song ids given")
    for song in song_ids:
        check_id(song, "song_id")
    at = time.time()
    with _data_dir("recording hidden songs"):
        HiddenSongs(cfg.catalog_dir).record(list(song_ids), hidden, at)
    return at


@dataclass(frozen=True)
class Forgotten:
    user_ids: list[str]
    at: float  # their events with ts <= at are void; later ones start a new history
    lists_deleted: int
    events_purged: int
    segments_rewritten: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def forget_users(cfg: StreamConfig, client: redis.Redis, user_ids: list[str]) -> Forgotten:
    """Erase users: a tombstone (so no replay brings their past back), their lists deleted, their
    events purged from every log segment; workers erase their online state within a second."""
    if not user_ids:
        raise ValueError("no user ids given")
    for user in user_ids:
        check_id(user, "user_id")
    at = time.time()
    log = EventLog(cfg.log_dir)
    with _data_dir("recording the tombstones"):
        log.tombstones.record(list(user_ids), at)
    deleted = RecsWriter(client, RedisKeys(cfg.redis_namespace)).delete(list(user_ids))
    with _data_dir("purging the event log"):
        purged = purge_forgotten(log)
    return Forgotten(list(user_ids), at, deleted, purged.events, purged.segments)
