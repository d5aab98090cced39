"""Baselines the online model is measured against, on the same contract."""

from __future__ import annotations

from typing import Any

import numpy as np

from online_models.als import train_als
from online_models.base import RecList, Recommender, check_request
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.features import LESSON_K
from online_models.history import HistoryStore
from online_models.interactions import Interactions
from online_models.online import FIT_BATCH, OnlineALS
from online_models.popularity import PopularityLadder
from online_models.ranking import mask_seen, take_top
from online_models.serving import ServingModel


class SeenFilter:
    """Who heard what: every model filters the same way, so comparisons measure learning, not filtering."""

    def __init__(self, config: OnlineConfig) -> None:
        self.config = config
        self.history = HistoryStore(0.0, config.max_history, config.full_play_ms, config.skip_weight)

    def width(self, users: np.ndarray, k: int) -> int:
        """Length of a shared list that leaves every user in ``users`` k songs they have not heard."""
        if self.config.relisten == "always" or not len(users):
            return k
        slots, _ = self.history.seen(users)
        return k + int(np.bincount(slots, minlength=len(users)).max(initial=0))

    def top_unseen(self, users: np.ndarray, keys: np.ndarray, scores: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of one shared candidate list per user, minus what each user has heard."""
        width = min(len(keys), self.width(users, k))
        cand_k = np.broadcast_to(keys[:width], (len(users), width))
        cand_s = np.broadcast_to(scores[:width].astype(np.float32), (len(users), width))
        allowed = np.ones(cand_k.shape, bool) if self.config.relisten == "always" else \
            ~mask_seen(cand_k, *self.history.seen(users))
        return take_top(cand_k, cand_s, allowed, k)


def stream_popularity(ladder: PopularityLadder, history: HistoryStore, events: EventBatch, k: int,
                      candidates: int) -> None:
    """Learn a batch into ``ladder``: first count which half-life's list each play would have been
    on (a list of k songs plus room for what its user heard), then count the plays."""
    plays = np.flatnonzero(events.kinds == PLAY)
    if len(plays):
        heard = history.sizes(events.user_ids[plays])
        ladder.observe(events.song_keys[plays], k + np.minimum(heard, candidates))
    ladder.update(events)


class PopularityRecommender(Recommender):
    """The most played songs, minus what the user heard. Counts decay in events at several
    half-lives at once, and the list uses the one whose lists caught the most plays so far."""

    name = "popularity"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self.reset()

    @classmethod
    def _unit_test_skips(cls) -> frozenset[str]:
        return frozenset({"finds_the_users_cluster"})  # the same list for everyone, by design

    def reset(self) -> None:
        self.counts = PopularityLadder(self.config.half_lives)
        self.seen = SeenFilter(self.config)
        self._names: dict[int, str] = {}

    def fit(self, events: EventBatch) -> None:
        self.reset()
        ordered = events.sorted_by_time()
        for start in range(0, len(ordered), FIT_BATCH):  # in batches: each teaches which half-life predicts
            self.partial_fit(ordered.take(slice(start, start + FIT_BATCH)))

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        keys = events.song_keys
        _, first = np.unique(keys, return_index=True)
        self._names.update(zip(keys[first].tolist(), events.song_ids[first].tolist(), strict=True))
        stream_popularity(self.counts, self.seen.history, events, LESSON_K, self.config.candidates)
        return self.seen.history.update(events)

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        best = self.counts.best
        top_k = self.counts.top(self.seen.width(users, k), best)
        top_s = self.counts.scores(top_k)[:, best] if len(top_k) else np.empty(0)
        keys, scores = self.seen.top_unseen(users, top_k, top_s, k)
        names = np.array([self._names.get(int(x), "") for x in keys.ravel()], dtype=object).reshape(keys.shape)
        return RecList(names, scores, np.full(keys.shape, None, dtype=object), "popularity")


class StaticALS(Recommender):
    """ALS trained once and never updated: training-time user vectors, frozen popularity for users it
    never saw. It still filters what users play during the stream (serving logic, not learning)."""

    name = "static"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self.seen = SeenFilter(self.config)
        self.model: ServingModel | None = None
        self.frozen_popular: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.empty(0))

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": OnlineConfig(factors=8, iterations=8)}

    def fit(self, events: EventBatch) -> None:
        events = events.sorted_by_time()
        self.seen = SeenFilter(self.config)
        self.seen.history.update(events)
        artifact = train_als(Interactions.from_events(events, self.config), self.config)
        artifact.version = "static"
        self.model = ServingModel.from_artifact(artifact)
        counts, history = PopularityLadder(self.config.half_lives), HistoryStore(0.0, self.config.max_history)
        for start in range(0, len(events), FIT_BATCH):
            part = events.take(slice(start, start + FIT_BATCH))
            stream_popularity(counts, history, part, LESSON_K, self.config.candidates)
            history.update(part)
        top = counts.top(10_000, counts.best)
        self.frozen_popular = (top, counts.scores(top)[:, counts.best] if len(top) else np.empty(0))

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
            width = k + (0 if self.config.relisten == "always" else int(min(sizes[warm].max(), self.config.candidates)))
            cand_k, cand_s = self.model.index.search(vectors[warm], width)
            sel = np.isin(seen.slots, warm)
            remap = np.full(len(users), -1, np.int64)
            remap[warm] = np.arange(len(warm))
            allowed = np.ones(cand_k.shape, bool) if self.config.relisten == "always" else \
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
    """The online model, plus a retrain of ALS on everything seen every ``every`` events, served
    in place of the previous version while the online state carries on (as a scheduled retrain
    does next to running workers)."""

    name = "retrain"

    @classmethod
    def _unit_test_skips(cls) -> frozenset[str]:
        return OnlineALS._unit_test_skips()  # it serves the online model's lists

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
            self.online.retrain(everything)
            self._since = 0
            self.retrains += 1
        return touched

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        return self.online.recommend(user_ids, k)

    def similar(self, song_ids: np.ndarray, k: int = 10) -> RecList:
        return self.online.similar(song_ids, k)
