"""Baselines the online model is measured against, on the same contract."""

from __future__ import annotations

from typing import Any

import numpy as np

from online_models.als import train_als
from online_models.base import RecList, Recommender, check_request
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.history import HistoryStore
from online_models.interactions import Interactions
from online_models.online import OnlineALS
from online_models.popularity import DecayedCounts
from online_models.ranking import mask_seen, take_top
from online_models.serving import ServingModel


class _SeenFilter:
    """Who heard what: every model filters the same way, so comparisons measure learning, not filtering."""

    def __init__(self, config: OnlineConfig) -> None:
        self.config = config
        self.history = HistoryStore(0.0, config.max_history, config.full_play_ms, config.skip_weight)

    def top_unseen(self, users: np.ndarray, keys: np.ndarray, scores: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of one shared candidate list per user, minus what each user has heard."""
        seen = self.history.gather(users)
        sizes = np.bincount(seen.slots, minlength=len(users))
        width = min(len(keys), k + (0 if self.config.relisten else int(sizes.max(initial=0))))
        cand_k = np.broadcast_to(keys[:width], (len(users), width))
        cand_s = np.broadcast_to(scores[:width].astype(np.float32), (len(users), width))
        allowed = np.ones(cand_k.shape, bool) if self.config.relisten else \
            ~mask_seen(cand_k, seen.slots, seen.keys)
        return take_top(cand_k, cand_s, allowed, k)


class PopularityRecommender(Recommender):
    """The most played songs (time-decayed counts, updated online), minus what the user heard."""

    name = "popularity"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self.reset()

    @classmethod
    def _unit_test_skips(cls) -> frozenset[str]:
        return frozenset({"finds_the_users_cluster"})  # the same list for everyone, by design

    def reset(self) -> None:
        self.counts = DecayedCounts(self.config.popularity_half_life_days)
        self.seen = _SeenFilter(self.config)
        self._names: dict[int, str] = {}

    def fit(self, events: EventBatch) -> None:
        self.reset()
        self.partial_fit(events.sorted_by_time())

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        keys = events.song_keys
        _, first = np.unique(keys, return_index=True)
        self._names.update(zip(keys[first].tolist(), events.song_ids[first].tolist(), strict=True))
        self.counts.update(events)
        return self.seen.history.update(events)

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        top_k, top_s = self.counts.top(k + self.config.max_history)
        keys, scores = self.seen.top_unseen(users, top_k, top_s, k)
        names = np.array([self._names.get(int(x), "") for x in keys.ravel()], dtype=object).reshape(keys.shape)
        return RecList(names, scores, np.full(keys.shape, None, dtype=object), "popularity")


class StaticALS(Recommender):
    """ALS trained once and never updated: training-time user vectors, frozen popularity for users it
    never saw. It still filters what users play during the stream (serving logic, not learning)."""

    name = "static"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self.seen = _SeenFilter(self.config)
        self.model: ServingModel | None = None
        self.frozen_popular: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.empty(0))

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": OnlineConfig(factors=8, iterations=8)}

    def fit(self, events: EventBatch) -> None:
        events = events.sorted_by_time()
        self.seen = _SeenFilter(self.config)
        self.seen.history.update(events)
        artifact = train_als(Interactions.from_events(events, self.config), self.config)
        artifact.version = "static"
        self.model = ServingModel.from_artifact(artifact)
        counts = DecayedCounts(self.config.popularity_half_life_days)
        counts.update(events)
        self.frozen_popular = counts.top(10_000)

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        return self.seen.history.update(events)

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        if self.model is None:
            raise ValueError("fit() first")
        vectors, known = self.model.trained_user_vectors(users)
        seen = self.seen.history.gather(users)
        sizes = np.bincount(seen.slots, minlength=len(users))
        keys = np.full((len(users), k), -1, np.int64)
        scores = np.full((len(users), k), -np.inf, np.float32)
        warm = np.flatnonzero(known)
        if len(warm):
            width = k + (0 if self.config.relisten else int(min(sizes[warm].max(), self.config.candidates)))
            cand_k, cand_s = self.model.index.search(vectors[warm], width)
            sel = np.isin(seen.slots, warm)
            remap = np.full(len(users), -1, np.int64)
            remap[warm] = np.arange(len(warm))
            allowed = np.ones(cand_k.shape, bool) if self.config.relisten else \
                ~mask_seen(cand_k, remap[seen.slots[sel]], seen.keys[sel])
            keys[warm], scores[warm] = take_top(cand_k, cand_s, allowed, k)
        cold = np.flatnonzero(~known)
        if len(cold):
            keys[cold], scores[cold] = self.seen.top_unseen(users[cold], *self.frozen_popular, k)
        names = self.model.index.names_of(keys)
        return RecList(names, scores, np.full(keys.shape, None, dtype=object), "static")

    def similar(self, song_ids: np.ndarray, k: int = 10) -> RecList:
        songs = check_request(song_ids, k, "song_ids")
        if self.model is None:
            raise ValueError("fit() first")
        return self.model.similar(songs, k, depth=self.config.candidates)


class PeriodicRetrain(Recommender):
    """The online model, plus a full retrain on everything seen every ``every`` events."""

    name = "retrain"

    def __init__(self, config: OnlineConfig | None = None, every: int = 10_000) -> None:
        if every <= 0:
            raise ValueError("every must be positive")
        self.config = config or OnlineConfig()
        self.every = every
        self.online = OnlineALS(self.config)
        self._log: list[EventBatch] = []
        self._since = 0
        self.retrains = 0

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": OnlineConfig(factors=8, iterations=8), "every": 200}

    def fit(self, events: EventBatch) -> None:
        self._log = [events]
        self._since = 0
        self.online.fit(events)

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        self._log.append(events)
        self._since += len(events)
        touched = self.online.partial_fit(events)
        if self._since >= self.every:
            everything = EventBatch.concat(self._log)
            self._log = [everything]
            self.online.fit(everything)
            self._since = 0
            self.retrains += 1
        return touched

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        return self.online.recommend(user_ids, k)

    def similar(self, song_ids: np.ndarray, k: int = 10) -> RecList:
        return self.online.similar(song_ids, k)
