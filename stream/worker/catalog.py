"""Catalog events in the worker: every valid song is stored, and a new song with content features
is indexed at once from its projected content vector, in every model version the worker serves.

The songs indexed from content are remembered, so each newly loaded version gets them too before it
serves (they reach a version's own factors at the first retrain after they have plays).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from index_manager.keys import song_keys
from offline.catalog import CatalogRows, CatalogStore
from online_models.content import GENRE_PREFIX, ContentProjection, feature_matrix, new_song_vectors
from online_models.serving import ServingModel
from stream.events import InvalidEvent, Song, parse_song
from stream.worker.messages import DeadLetter, Message
from stream.worker.stats import Counters


def _content_problem(song: Song, projection: ContentProjection | None) -> str | None:
    """Why a song's features cannot be projected by the served model (None when they can)."""
    if projection is None or not song.features or feature_matrix(projection.names, [song.features], [song.genre])[1][0]:
        return None
    numeric = [n for n in projection.names if not n.startswith(GENRE_PREFIX)]
    return f"features do not match the model's content features ({len(numeric)} expected: {', '.join(numeric)})"


class CatalogIntake:
    def __init__(self, store: CatalogStore, counters: Counters) -> None:
        self.store = store
        self.counters = counters
        self._content: dict[str, tuple[dict[str, float], str | None]] = {}  # song -> (features, genre)

    def take(self, messages: list[Message], served: list[ServingModel], store: bool = True,
             index: bool = True, on_visibility: Callable[[list[Song]], None] | None = None) -> list[DeadLetter]:
        """Store every valid song (``store``); index new ones from their content in each of
        ``served``, the published version first (``index``). A song whose features do not fit the
        published version's projection is refused.

        With several workers the two halves are split: the catalog consumer group stores each song
        once and dead-letters what is refused, while every worker reads the whole topic to index.
        Songs whose message says ``hidden`` go to ``on_visibility`` too; a message of nothing but
        that is neither stored nor indexed (the song's catalog row stays as it was)."""
        projection = served[0].projection if served else None
        dead: list[DeadLetter] = []
        accepted: list[Song] = []
        for m in messages:
            try:
                song = parse_song(m.value or b"", m.key)
                problem = _content_problem(song, projection)
                if problem is not None:
                    raise InvalidEvent(problem)
            except InvalidEvent as exc:
                dead.append(DeadLetter(m.key, m.value, exc.reason, m.source))
                continue
            if song.hidden is not None:
                # a request's time is when it was produced: the same on every re-read of the topic
                song = replace(song, ts=m.timestamp)
            accepted.append(song)
        visibility = [s for s in accepted if s.hidden is not None]
        if visibility and on_visibility is not None:
            on_visibility(visibility)
        accepted = [s for s in accepted if not s.visibility_only]
        if store:
            self.store.append(CatalogRows([s.song_id for s in accepted], [s.title for s in accepted],
                                          [s.artist for s in accepted], [s.genre for s in accepted],
                                          [s.features for s in accepted], [s.ts for s in accepted]))
            self.counters.songs += len(accepted)
        if index:
            with_content = [s for s in accepted if s.features]
            self._content.update({s.song_id: (s.features, s.genre) for s in with_content})
            names = [s.song_id for s in with_content]
            for i, model in enumerate(served):
                added = self.add_to(model, names)
                if i == 0:
                    self.counters.songs_indexed += added
            if messages:
                self.counters.catalog_lag_ms = (time.time() - max(m.timestamp for m in messages)) * 1000
        return dead

    def add_to(self, model: ServingModel, names: list[str] | None = None) -> int:
        """Project and index those of ``names`` (default: every song indexed from content so far)
        that ``model`` has no vector for; returns how many were added."""
        names = list(self._content) if names is None else names
        projection = model.projection
        if projection is None or not names:
            return 0
        rows = model.index.rows(song_keys(np.array(names, dtype=object)))
        missing = [n for n, r in zip(names, rows, strict=True) if r < 0]
        if not missing:
            return 0
        x, ok = feature_matrix(projection.names, [self._content[n][0] for n in missing],
                               [self._content[n][1] for n in missing])
        if not ok.any():
            return 0
        model.index.add(np.array(missing, dtype=object)[ok], new_song_vectors(projection, x[ok], model.new_song_norm))
        return int(ok.sum())
