"""What the worker does with one micro-batch, independent of Faust.

validate -> append to the event log -> ``model.partial_fit`` -> ``model.recommend`` for the touched
users -> one Redis pipeline. The online maths is the same ``online_models`` code the prequential
replay runs; this module adds only the edges (log, Redis, dead letters, counters, model swaps).
"""

from __future__ import annotations

import itertools
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
from index_manager.holder import ModelHolder
from index_manager.keys import song_keys
from offline.catalog import CatalogRows, CatalogStore
from offline.eventlog import EventLog
from online_models.abtest import CONTROL, TREATMENT, ArmMetrics, in_treatment
from online_models.base import RecList
from online_models.batch import EventBatch
from online_models.content import GENRE_PREFIX, feature_matrix, new_song_vectors
from online_models.online import OnlineALS
from online_models.serving import ServingModel
from stream.abtest import ABTest, current_test
from stream.events import MAX_MESSAGE_BYTES, Song, parse_events, parse_song
from stream.redis_store import RecsWriter, RedisKeys, translate_errors
from stream.settings import Settings

log = logging.getLogger("musicrec.worker")

REASON_HEADER = "x-musicrec-reason"
SOURCE_HEADER = "x-musicrec-source"
ACTIVE_USERS = 50_000  # users whose lists are refreshed right after a model swap
# event ids remembered as already folded into the online state. Kafka redelivers what was not
# committed (a few seconds of events: Faust commits every ~3 s), so this only needs to cover that.
APPLIED_IDS = 50_000
TRUNCATED_HEADER = "x-musicrec-truncated"


@dataclass
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    source: str

    truncated_from: int | None = None  # original value size when the value had to be cut

    def headers(self) -> list[tuple[str, bytes]]:
        out = [(REASON_HEADER, self.reason.encode("utf-8")), (SOURCE_HEADER, self.source.encode("utf-8"))]
        if self.truncated_from is not None:
            out.append((TRUNCATED_HEADER, str(self.truncated_from).encode()))
        return out

    def truncated(self, limit: int = MAX_MESSAGE_BYTES) -> DeadLetter:
        """A copy small enough for any dead-letter topic (when the broker refuses the original)."""
        value = self.value or b""
        return DeadLetter(None if self.key is None else self.key[:1024], value[:limit], self.reason, self.source,
                          len(value))


@dataclass
class Counters:
    events: int = 0
    refused: int = 0  # counted once delivered to the dead-letter topic (see ``dead_lettered``)
    duplicates: int = 0  # valid events already folded in (Kafka redelivery): logged and learnt once
    batches: int = 0
    users_written: int = 0
    last_batch_ms: float = 0.0
    swaps: int = 0
    refused_versions: int = 0
    songs: int = 0
    songs_indexed: int = 0
    catalog_lag_ms: float = 0.0
    started_at: float = field(default_factory=time.time)
    first_batch_at: float = 0.0  # wall clock of the first and latest batch with events (throughput)
    last_batch_at: float = 0.0
    events_at_first_batch: int = 0
    # event -> Redis freshness (write acknowledged minus the event's Kafka timestamp), recent events
    fresh_p50_ms: float = 0.0
    fresh_p95_ms: float = 0.0
    fresh_p99_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LatencyWindow:
    """The most recent ``size`` latencies (seconds) in a ring buffer; percentiles on demand."""

    def __init__(self, size: int = 20_000) -> None:
        self._values = np.zeros(size)
        self._next = 0
        self._count = 0

    def add(self, seconds: np.ndarray) -> None:
        seconds = np.asarray(seconds, dtype=np.float64)[-len(self._values):]
        idx = (self._next + np.arange(len(seconds))) % len(self._values)
        self._values[idx] = seconds
        self._next = (self._next + len(seconds)) % len(self._values)
        self._count = min(len(self._values), self._count + len(seconds))

    def percentiles_ms(self, ps: tuple[float, ...] = (50, 95, 99)) -> tuple[float, ...]:
        if self._count == 0:
            return tuple(0.0 for _ in ps)
        return tuple(float(v) * 1000 for v in np.percentile(self._values[:self._count], ps))


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


@dataclass
class ABRun:
    """The A/B test this worker serves: the treatment arm's recommender and both arms' hits."""

    test: ABTest
    model: OnlineALS  # shares the users' histories with the control arm's
    metrics: ArmMetrics


class BatchProcessor:
    """Owns one worker's online model, its log writer and its Redis writer."""

    def __init__(self, settings: Settings, redis_client: Any, worker_id: str | None = None,
                 applied_ids: int = APPLIED_IDS) -> None:
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
        self.freshness = LatencyWindow()
        # ids of the events most recently folded into the model (insertion-ordered, bounded): a
        # redelivered event must be learnt once, or the user's engagement would count it twice
        self._applied: dict[str, None] = {}
        self._applied_max = applied_ids
        self._unwritten: set[str] = set()  # applied by a batch whose Redis write has not succeeded yet
        self.ab: ABRun | None = None
        self._refused_tests: set[str] = set()

    # -- start-up -----------------------------------------------------------------------------
    def restore(self, chunk: int = 200_000) -> int:
        """Rebuild online state from the event log (the state's source of truth); returns events read."""
        events = self.log.read()
        for start in range(0, len(events), chunk):
            self.model.partial_fit(events.take(slice(start, start + chunk)))
        for u in events.user_ids[-ACTIVE_USERS:]:
            self._touch(u)
        # what Kafka may redeliver (not yet committed when the last worker stopped) is in the log
        # and therefore already in the state just rebuilt: remember the log's newest event ids
        self._remember(self.log.recent_event_ids(self._applied_max))
        return len(events)

    def _remember(self, ids: Any) -> None:
        applied = self._applied
        for event_id in ids:
            applied[event_id] = None
        excess = len(applied) - self._applied_max
        if excess > 0:
            for old in list(itertools.islice(applied, excess)):
                del applied[old]

    def _first_application(self, ids: np.ndarray) -> np.ndarray:
        """Mask of events not yet folded into the model: neither remembered as applied nor a
        repeat of an earlier event of the same batch."""
        applied = self._applied
        seen: set[str] = set()
        mask = np.ones(len(ids), dtype=bool)
        for i, event_id in enumerate(ids.tolist()):
            if event_id in applied or event_id in seen:
                mask[i] = False
            seen.add(event_id)
        return mask

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

    def add_songs(self, messages: list[Message], store: bool = True, index: bool = True) -> list[DeadLetter]:
        """Catalog events: store every valid song (``store``); index new ones from their content at
        once (``index``). A song whose features do not fit the served model's projection is refused.

        With several workers the two halves are split: the catalog consumer group stores each song
        once and dead-letters what is refused, while every worker reads the whole topic to index."""
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
        if store:
            self.catalog.append(CatalogRows([s.song_id for s in accepted], [s.title for s in accepted],
                                            [s.artist for s in accepted], [s.genre for s in accepted],
                                            [s.features for s in accepted], [s.ts for s in accepted]))
            self.counters.songs += len(accepted)
        if index:
            with_content = [s for s in accepted if s.features]
            self._content_songs.update({s.song_id: (s.features, s.genre) for s in with_content})
            if pair is not None:
                self.counters.songs_indexed += self._add_content_songs(pair[0], [s.song_id for s in with_content])
            treatment = self.ab.model.holder.peek() if self.ab is not None else None
            if treatment is not None:
                self._add_content_songs(treatment[0], [s.song_id for s in with_content])
            if messages:
                self.counters.catalog_lag_ms = (time.time() - max(m.timestamp for m in messages)) * 1000
        return dead

    def prepare_swap(self, version: str) -> ServingModel | None:
        """Load and check ``version`` aside (safe to run next to batches); None if it is not newer
        or is refused."""
        current = self.model.holder.version
        if version == current or (current is not None and version < current) or version in self._refused:
            return None
        try:
            return self.load_version(version)
        except (ArtifactError, MusicrecError, OSError, ValueError) as exc:
            self.counters.refused_versions += 1
            self._refused.add(version)  # logged once; a fixed artifact gets a new version name
            log.error("refusing model version %s, still serving %s: %s", version, current, exc)
            return None

    def install(self, candidate: ServingModel) -> bool:
        """Swap a prepared version in (run where batches run: it touches the live song set)."""
        current = self.model.holder.version
        # songs added from content since the training cut-off go into the new index before it serves
        self._add_content_songs(candidate, list(self._content_songs))
        swapped = self.model.install(candidate)
        if swapped:
            self.counters.swaps += 1
            log.warning("now serving model version %s (was %s)", candidate.version, current)
        return swapped

    def try_swap(self, version: str) -> bool:
        candidate = self.prepare_swap(version)
        return candidate is not None and self.install(candidate)

    def refresh_active(self, batch_size: int = 2000) -> int:
        """Recompute and store the lists of recently active users (after a swap)."""
        users = np.asarray(list(self._active), dtype=object)
        for start in range(0, len(users), batch_size):
            self._write_lists(users[start:start + batch_size], None)
        return len(users)

    # -- A/B tests ----------------------------------------------------------------------------
    def wanted_test(self) -> ABTest | None:
        """The test published in Redis (None if there is none)."""
        return current_test(self.redis, self.keys)

    def prepare_test(self, test: ABTest) -> ServingModel | None:
        """Load and check the treatment's version aside; None (logged once) if it is unusable."""
        if test.salt in self._refused_tests:
            return None
        try:
            return self.load_version(test.treatment)
        except (ArtifactError, MusicrecError, OSError, ValueError) as exc:
            self._refused_tests.add(test.salt)
            log.error("not serving A/B test of %s: %s", test.treatment, exc)
            return None

    def start_test(self, test: ABTest, treatment: ServingModel) -> None:
        holder: ModelHolder[ServingModel] = ModelHolder()
        self._add_content_songs(treatment, list(self._content_songs))
        holder.swap(treatment, treatment.version)
        self.ab = ABRun(test, self.model.sharing_state(holder), ArmMetrics(horizon=test.horizon))
        log.warning("A/B test: %.0f%% of users get %s", 100 * test.share, test.treatment)

    def stop_test(self) -> None:
        if self.ab is not None:
            log.warning("A/B test of %s stopped: %s", self.ab.test.treatment, self.ab.metrics.summary())
        self.ab = None

    def _write_lists(self, users: np.ndarray, last_events: list[dict[str, Any] | None] | None) -> float:
        """Recommend for ``users`` and store their lists (split by arm while a test runs)."""
        ab = self.ab
        if ab is None:
            recs = self.model.explain(users, self.model.recommend(users, self.k))
            return self.writer.write(users, recs, last_events, self._popular_list())
        treated = in_treatment(users, ab.test.salt, ab.test.share)
        written = time.time()
        popular: RecList | None = self._popular_list()
        for arm, model, sel in ((CONTROL, self.model, ~treated), (TREATMENT, ab.model, treated)):
            idx = np.flatnonzero(sel)
            if not len(idx):
                continue
            part = users[idx]
            recs = model.explain(part, model.recommend(part, self.k))
            written = self.writer.write(part, recs, None if last_events is None else [last_events[i] for i in idx],
                                        popular, arm=arm)
            popular = None
            ab.metrics.record(part, arm, recs.song_ids)
        return written

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
        duplicates = 0
        if len(batch):
            # An event already folded in -- redelivered by Kafka after a crash or a rebalance, or
            # this very batch again after a failed Redis write -- is neither appended nor learnt a
            # second time (the user's engagement would count it twice); its user's list is still
            # recomputed and written.
            new = self._first_application(batch.event_ids)
            duplicates = sum(1 for i in np.flatnonzero(~new) if batch.event_ids[i] not in self._unwritten)
            fresh = batch if new.all() else batch.take(new)
            self.log.append(fresh, writer=self.worker_id)
            produced = np.array([messages[i].timestamp for i in parsed.positions], dtype=np.float64)
            self.model.partial_fit(fresh)
            self._remember(fresh.event_ids)
            self._unwritten.update(fresh.event_ids.tolist())
            touched = np.unique(batch.user_ids)
            if self.ab is not None:
                self.ab.metrics.observe(fresh)  # against the lists served before these events
            written = self._write_lists(touched, last_per_user(touched, batch, produced))
            self._unwritten.clear()
            self.freshness.add(written - produced)
            for u in touched:
                self._touch(u)
            self.counters.users_written += len(touched)
        self.counters.events += len(batch)
        self.counters.duplicates += duplicates
        self.counters.batches += 1
        self.counters.last_batch_ms = (time.perf_counter() - t0) * 1000
        if len(batch):
            self.counters.last_batch_at = time.time()
            if not self.counters.first_batch_at:
                self.counters.first_batch_at = self.counters.last_batch_at
                self.counters.events_at_first_batch = self.counters.events
        return dead

    def compact_log(self) -> int:
        """Merge this worker's per-batch log segments once there are many (runs between batches)."""
        return self.log.compact_own(self.worker_id)

    def dead_lettered(self, n: int) -> None:
        """Called by the Faust shell once ``n`` dead letters are acknowledged by the broker."""
        self.counters.refused += n

    def _touch(self, user: str) -> None:
        self._active[user] = None
        self._active.move_to_end(user)
        if len(self._active) > ACTIVE_USERS:
            self._active.popitem(last=False)

    def _popular_list(self) -> RecList:
        return self.model.popular(self.k)

    def publish_stats(self) -> None:
        p50, p95, p99 = self.freshness.percentiles_ms()
        self.counters.fresh_p50_ms, self.counters.fresh_p95_ms, self.counters.fresh_p99_ms = p50, p95, p99
        data = dict(self.counters.as_dict(), worker=self.worker_id, version=self.model.holder.version,
                    users=len(self.model.history), updated_at=time.time())
        if self.ab is not None:
            data["ab"] = {"salt": self.ab.test.salt, "treatment": self.ab.test.treatment,
                          "arms": self.ab.metrics.summary()}
        with translate_errors("publishing worker stats"):
            self.redis.set(self.keys.stats(self.worker_id), json.dumps(data), ex=300)
