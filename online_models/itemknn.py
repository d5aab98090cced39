"""The co-occurrence signal alone, as a baseline: songs co-played with the user's latest plays."""

from __future__ import annotations

from typing import Any

import numpy as np

from online_models.base import RecList, Recommender, check_request
from online_models.baselines import SeenFilter, stream_popularity
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.cooc import CoOccurrence
from online_models.features import LESSON_K
from online_models.online import FIT_BATCH
from online_models.popularity import PopularityLadder
from online_models.ranking import mask_seen, repeats, take_top
from online_models.sequences import RecentPlays

# votes divided by (plays x plays) ** 0.25: between raw votes (0), which favour hits, and cosine
# (0.5), which favours rarities; 0.25 led on the early half of both Last.fm and MovieLens
EXPONENT = 0.25


class ItemKNN(Recommender):
    """Item-to-item co-occurrence, updated online exactly as the product's signal is (same window,
    neighbours and skips), ranked by its votes alone; popular songs fill lists it cannot."""

    name = "itemknn"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self.reset()

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": OnlineConfig(recent_plays=10)}

    def reset(self) -> None:
        c = self.config
        self.recent = RecentPlays(c.recent_plays)
        self.cooc = CoOccurrence(c.cooc_half_life_events, c.cooc_neighbours)
        self.popularity = PopularityLadder(c.half_lives)
        self.seen = SeenFilter(c)
        self._names: dict[int, str] = {}

    def fit(self, events: EventBatch) -> None:
        self.reset()
        ordered = events.sorted_by_time()
        for start in range(0, len(ordered), FIT_BATCH):
            self.partial_fit(ordered.take(slice(start, start + FIT_BATCH)))

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        keys = events.song_keys
        _, first = np.unique(keys, return_index=True)
        self._names.update(zip(keys[first].tolist(), events.song_ids[first].tolist(), strict=True))
        stream_popularity(self.popularity, self.seen.history, events, LESSON_K, self.config.candidates)
        self.cooc.learn_events(self.recent, events, self.config.skip_weight)
        return self.seen.history.update(events)

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        query = self.cooc.query(self.recent.gather(users), exponent=EXPONENT, both_sides=True)
        heard = self.seen.history.seen(users)
        near = query.top(self.config.cooc_candidates, None if self.config.relisten == "always" else heard)
        _, votes = query.at(near)
        best = self.popularity.best
        popular = self.popularity.top(self.seen.width(users, k), best)
        pop = self.popularity.scores(popular)[:, best] if len(popular) else np.empty(0)
        keys = np.concatenate([near, np.broadcast_to(popular, (len(users), len(popular)))], axis=1)
        # any co-played song ranks above every song popularity merely fills in with
        rel = votes / np.maximum(votes.max(axis=1, keepdims=True), 1e-300)
        fill = np.broadcast_to(pop / max(float(pop.max(initial=0.0)), 1e-300), (len(users), len(popular)))
        scores = np.concatenate([np.where(votes > 0, 1.0 + rel, -np.inf), fill], axis=1).astype(np.float32)
        allowed = (keys >= 0) & ~repeats(keys)
        if self.config.relisten != "always":
            allowed &= ~mask_seen(keys, *heard)
        top_k, top_s = take_top(keys, scores, allowed, k)
        names = np.array([self._names.get(int(x), "") for x in top_k.ravel()], dtype=object).reshape(top_k.shape)
        return RecList(names, top_s, np.full(top_k.shape, None, dtype=object), self.name)
