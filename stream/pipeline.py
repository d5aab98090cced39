"""What the worker does with one micro-batch, independent of Faust.

validate -> append to the event log -> ``model.partial_fit`` -> ``model.recommend`` for the touched
users -> one Redis pipeline. The online maths is the same ``online_models`` code the prequential
replay runs; this module adds only the edges (log, Redis, dead letters, counters, model swaps).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_manager.artifacts import load_artifact
from index_manager.errors import ArtifactError, InvalidEvent, MusicrecError
from index_manager.keys import song_keys
from offline.catalog import CatalogRows, CatalogStore
from offline.eventlog import EventLog
from online_models.base import RecList
from online_models.batch import EventBatch
from online_models.content import GENRE_PREFIX, feature_matrix, new_song_vectors
from online_models.online import OnlineALS
from online_models.serving import ServingModel
from stream.events import Song, parse_events, parse_song
from stream.redis_store import RecsWriter, RedisKeys, translate_errors
from stream.settings import Settings

log = logging.getLogger("musicrec.worker")

REASON_HEADER = "x-musicrec-reason"
SOURCE_HEADER = "x-musicrec-source"
ACTIVE_USERS = 50_000  # users whose lists are refreshed right after a model swap


@dataclass
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    source: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [(REASON_HEADER, self.reason.encode("utf-8")), (SOURCE_HEADER, self.source.encode("utf-8"))]


@dataclass
class Counters:
    events: int = 0
    refused: int = 0
    batches: int = 0
    users_written: int = 0
    last_batch_ms: float = 0.0
    swaps: int = 0
    refused_versions: int = 0
    songs: int = 0
    songs_indexed: int = 0
    catalog_lag_ms: float = 0.0
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Message:
    """The parts of a Kafka record the pipeline needs."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float  # producer's CreateTime, seconds


def last_per_user(users: np.ndarray, batch: EventBatch, produced_at: np.ndarray) -> list[dict[str, Any] | None]:
    """The latest event of each of ``users`` within ``batch`` (for the Redis value's freshness)."""
    order = np.lexsort((batch.ts, batch.user_ids))  # by user, then time; last of each run wins
    u_sorted = batch.user_ids[order]
    last_idx = order[np.r_[u_sorted[1:] != u_sorted[:-1], True]]
    by_user = dict(zip(batch.user_ids[last_idx].tolist(), last_idx.tolist(), strict=True))
    out: list[dict[str, Any] | None] = []
    for u in users:
        i = by_user.get(u)
        out.append(None if i is None else {"event_id": batch.event_ids[i], "ts": float(batch.ts[i]),
                                           "produced_at": float(produced_at[i])})
    return out


class BatchProcessor:
    """Owns one worker's online model, its log writer and its Redis writer."""

    def __init__(self, settings: Settings, redis_client: Any, worker_id: str | None = None) -> None:
        self.settings = settings
        cfg = settings.stream
        self.model = OnlineALS(settings.model)
        self.keys = RedisKeys(cfg.redis_namespace)
        self.redis = redis_client
        self.writer = RecsWriter(redis_client, self.keys)
        self.log = EventLog(cfg.log_dir)
        self.catalog = CatalogStore(cfg.catalog_dir)
        # songs added to the live index from their content, to carry over into the next version
        self._content_songs: dict[str, tuple[dict[str, float], str | None]] = {}
        self.k = cfg.k
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.counters = Counters()
        self._active: OrderedDict[str, None] = OrderedDict()
        self._refused: set[str] = set()

    # -- start-up -----------------------------------------------------------------------------
    def restore(self, chunk: int = 200_000) -> int:
        """Rebuild online state from the event log (the state's source of truth); returns events read."""
        events = self.log.read()
        for start in range(0, len(events), chunk):
            self.model.partial_fit(events.take(slice(start, start + chunk)))
        for u in events.user_ids[-ACTIVE_USERS:]:
            self._touch(u)
        return len(events)

    # -- model versions -----------------------------------------------------------------------
    def published_version(self) -> str | None:
        with translate_errors("reading the model pointer"):
            raw = self.redis.get(self.keys.model_pointer())
        return None if raw is None else raw.decode()

    def load_version(self, version: str) -> ServingModel:
        """Load and check a version off the hot path (raises ArtifactError if it is unusable)."""
        model = ServingModel.from_artifact(load_artifact(self.settings.stream.artifacts_dir, version))
        probe, _ = model.index.search(model.index.factors[:1], 1)
        if probe[0, 0] < 0:
            raise ArtifactError(f"version {version}: index returns nothing for its own songs")
        return model

    def _add_content_songs(self, model: ServingModel, names: list[str]) -> int:
        """Project and index those of ``names`` (known content songs) the model has no vector for."""
        proj = model.projection
        if proj is None or not names:
            return 0
        missing = [n for n, r in zip(names, model.index.rows(song_keys(np.array(names, dtype=object))), strict=True)
                   if r < 0]
        if not missing:
            return 0
        feats = [self._content_songs[n][0] for n in missing]
        genres = [self._content_songs[n][1] for n in missing]
        x, ok = feature_matrix(proj.names, feats, genres)
        if not ok.any():
            return 0
        model.index.add(np.array(missing, dtype=object)[ok], new_song_vectors(proj, x[ok], model.new_song_norm))
        return int(ok.sum())

    def add_songs(self, messages: list[Message]) -> list[DeadLetter]:
        """Catalog events: store every valid song; index new ones from their content at once.
        A song whose features do not fit the served model's projection is refused (dead letter)."""
        pair = self.model.holder.peek()
        proj = pair[0].projection if pair is not None else None
        dead: list[DeadLetter] = []
        accepted: list[Song] = []
        for m in messages:
            source = f"{m.topic}/{m.partition}/{m.offset}"
            try:
                song = parse_song(m.value or b"", m.key)
                if proj is not None and song.features and not feature_matrix(
                        proj.names, [song.features], [song.genre])[1][0]:
                    numeric = [n for n in proj.names if not n.startswith(GENRE_PREFIX)]
                    raise InvalidEvent(f"features do not match the model's content features ({len(numeric)} "
                                       f"expected: {', '.join(numeric)})")
            except InvalidEvent as exc:
                dead.append(DeadLetter(m.key, m.value, exc.reason, source))
                continue
            accepted.append(song)
        self.catalog.append(CatalogRows([s.song_id for s in accepted], [s.title for s in accepted],
                                        [s.artist for s in accepted], [s.genre for s in accepted],
                                        [s.features for s in accepted], [s.ts for s in accepted]))
        with_content = [s for s in accepted if s.features]
        self._content_songs.update({s.song_id: (s.features, s.genre) for s in with_content})
        if pair is not None:
            self.counters.songs_indexed += self._add_content_songs(pair[0], [s.song_id for s in with_content])
        self.counters.songs += len(accepted)
        self.counters.refused += len(dead)
        if messages:
            self.counters.catalog_lag_ms = (time.time() - max(m.timestamp for m in messages)) * 1000
        return dead

    def try_swap(self, version: str) -> bool:
        current = self.model.holder.version
        if version == current or (current is not None and version < current) or version in self._refused:
            return False
        try:
            candidate = self.load_version(version)
        except (ArtifactError, MusicrecError, OSError, ValueError) as exc:
            self.counters.refused_versions += 1
            self._refused.add(version)  # logged once; a fixed artifact gets a new version name
            log.error("refusing model version %s, still serving %s: %s", version, current, exc)
            return False
        # songs added from content since the training cut-off go into the new index before it serves
        self._add_content_songs(candidate, list(self._content_songs))
        swapped = self.model.install(candidate)
        if swapped:
            self.counters.swaps += 1
            log.warning("now serving model version %s (was %s)", version, current)
        return swapped

    def refresh_active(self, batch_size: int = 2000) -> int:
        """Recompute and store the lists of recently active users (after a swap)."""
        users = np.asarray(list(self._active), dtype=object)
        for start in range(0, len(users), batch_size):
            part = users[start:start + batch_size]
            self.writer.write(part, self.model.explain(part, self.model.recommend(part, self.k)), None,
                              self._popular_list())
        return len(users)

    # -- the hot path -------------------------------------------------------------------------
    def process(self, messages: list[Message]) -> list[DeadLetter]:
        """Handle one micro-batch; returns the dead letters the caller must produce before acking."""
        t0 = time.perf_counter()
        values = [m.value for m in messages]
        keys = [m.key for m in messages]
        ids = [f"{m.topic}/{m.partition}/{m.offset}" for m in messages]
        parsed = parse_events(values, keys, ids)
        dead = [DeadLetter(messages[i].key, messages[i].value, reason, ids[i]) for i, reason in parsed.refused]
        batch = parsed.events
        if len(batch):
            self.log.append(batch)
            produced = np.array([messages[i].timestamp for i in parsed.positions], dtype=np.float64)
            touched = self.model.partial_fit(batch)
            recs = self.model.explain(touched, self.model.recommend(touched, self.k))
            self.writer.write(touched, recs, last_per_user(touched, batch, produced), self._popular_list())
            for u in touched:
                self._touch(u)
            self.counters.users_written += len(touched)
        self.counters.events += len(batch)
        self.counters.refused += len(dead)
        self.counters.batches += 1
        self.counters.last_batch_ms = (time.perf_counter() - t0) * 1000
        return dead

    def _touch(self, user: str) -> None:
        self._active[user] = None
        self._active.move_to_end(user)
        if len(self._active) > ACTIVE_USERS:
            self._active.popitem(last=False)

    def _popular_list(self) -> RecList:
        return self.model.popular(self.k)

    def publish_stats(self) -> None:
        data = dict(self.counters.as_dict(), worker=self.worker_id, version=self.model.holder.version,
                    users=len(self.model.history), updated_at=time.time())
        with translate_errors("publishing worker stats"):
            self.redis.set(self.keys.stats(self.worker_id), json.dumps(data), ex=300)
