"""The product's recommender: ALS item factors from the last retrain, user vectors folded in online."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from index_manager.artifacts import new_version_name
from index_manager.holder import ModelHolder, Served
from online_models.als import train_als
from online_models.base import RecList, Recommender, check_request
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.explain import explain, popular_list
from online_models.features import LESSON_K, Pool
from online_models.interactions import Interactions
from online_models.parallel import Parts
from online_models.scoring import (
    FRESH_EVERY,
    POPULARITY_VERSION,
    ServedPool,
    ServedPools,
    learn_ranker,
    recommend,
    recommend_keys,
    user_pool,
)
from online_models.serving import ServingModel
from online_models.state import OnlineState

FIT_BATCH = 2048  # events per partial_fit when a baseline streams its log through its own learning
REPLAY_BATCH = 256  # events per batch of a replay (the evaluation's micro-batch)


@dataclass(frozen=True)
class ServedLists:
    """What one request serves, all from one model version: each user's list with its reasons, and
    the popularity list readers fall back on."""

    recs: RecList
    popular: RecList


class OnlineALS(Recommender):
    """Learns every event: the user's decayed history is updated and their vector re-solved against
    the current item factors (fold-in) before their list is recomputed.

    The item side (:class:`ServingModel`) lives in a :class:`ModelHolder` and is swapped whole when a
    retrain publishes a new version; the user side (:class:`OnlineState`) is kept across swaps, so
    users are simply re-folded against the new factors. Without any model, lists come from
    popularity. Each request reads the holder once and passes that version down.

    Serving extension (what the worker calls beyond the contract): :meth:`serve`, the ``holder`` it
    swaps published versions into, :meth:`with_holder` for an A/B arm, and ``state`` (its size).
    """

    name = "online"

    def __init__(self, config: OnlineConfig | None = None, holder: ModelHolder[ServingModel] | None = None,
                 state: OnlineState | None = None, parts: Parts | None = None) -> None:
        self.config = config or OnlineConfig()
        self.holder: ModelHolder[ServingModel] = holder or ModelHolder()
        self.state = state or OnlineState(self.config)
        self.parts = parts or Parts()  # the threads :meth:`serve` splits a request's users over
        self._served_pools = ServedPools()
        self._batches = 0

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": OnlineConfig(factors=8, iterations=8)}

    @classmethod
    def _unit_test_skips(cls) -> frozenset[str]:
        # by default (relisten = learn) the stream decides whether heard songs come back; the
        # filtering under `never` is checked in tests/unit/test_online.py
        return frozenset({"filters_what_the_user_heard", "filters_what_the_user_just_heard"})

    # -- learning -----------------------------------------------------------------------------
    def fit(self, events: EventBatch) -> None:
        """Learn ``events`` as the product would have: the first half streamed into the online state,
        ALS trained on it and served, the second half streamed under that version (the ranker
        learns from its plays, as a worker does between retrains), then ALS retrained on all."""
        self.state = OnlineState(self.config)
        self._served_pools.clear()
        ordered = events.sorted_by_time()
        half = len(ordered) // 2
        self.state.learn(ordered.take(slice(0, half)))
        if half:
            self.retrain(ordered.take(slice(0, half)))
        self.replay(ordered.take(slice(half, None)))
        self.retrain(ordered)

    def replay(self, events: EventBatch, batch: int = REPLAY_BATCH) -> None:
        """Learn ``events`` (in time order) as a live stream teaches: each batch's users are served
        their lists, then the batch is learnt, so every play is a lesson for the ranker. The way
        to warm a new model, or a worker's ranker after a restart, from the tail of a log."""
        for start in range(0, len(events), batch):
            part = events.take(slice(start, start + batch))
            users = np.unique(part.user_ids[part.kinds == PLAY])
            if len(users):
                self.recommend(users, LESSON_K)
            self.partial_fit(part)

    def retrain(self, events: EventBatch) -> None:
        """Train ALS on ``events`` and serve it; the online state is kept."""
        artifact = train_als(Interactions.from_events(events, self.config), self.config,
                             trained_on={"ts_min": float(events.ts.min()), "ts_max": float(events.ts.max()),
                                         "n_events": len(events)})
        self.install(ServingModel.from_artifact(artifact, new_version_name("als")))

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        """Learn a batch: first the ranker (what its plays say about the lists of the moment), then
        every signal of the online state."""
        self._batches += 1
        learn_ranker(self.state, self.holder.peek(), events, self._served_pools,
                     fresh=self._batches % FRESH_EVERY == 0)
        return self.state.learn(events)

    def install(self, model: ServingModel) -> bool:
        """Swap in a model built and checked aside; False if it is not newer than the current one."""
        return self.holder.swap(model, model.version)

    def with_holder(self, holder: ModelHolder[ServingModel]) -> OnlineALS:
        """A recommender over this one's online state serving ``holder``'s model (the second arm of
        an A/B test): learning through either one updates both. The vector cache is shared too: it
        is keyed by model version, and a user is in one arm."""
        return OnlineALS(self.config, holder, self.state, self.parts)

    # -- recommending -------------------------------------------------------------------------
    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        return self.recommend_with_pool(user_ids, k)[0]

    def recommend_with_pool(self, user_ids: np.ndarray, k: int = 10) -> tuple[RecList, np.ndarray]:
        users = check_request(user_ids, k)
        served = self.holder.peek()
        candidates = self._pool(served, users, k)
        return recommend(self.state, served, users, k, candidates), np.where(candidates.allowed, candidates.keys, -1)

    def _pool(self, served: Served[ServingModel] | None, users: np.ndarray, k: int) -> Pool:
        """The users' pool, kept for the next partial_fit: their next plays learn from what they were served."""
        candidates = user_pool(self.state, served, users, k)
        self._served_pools.add(ServedPool(users, self.state.history.stamps(users), served, candidates))
        return candidates

    def serve(self, user_ids: np.ndarray, k: int) -> ServedLists:
        """The lists a reader is served: recommendations with their reasons, and the popular list.
        The users are served in parts on ``parts``' threads; their pools are kept in the users' order."""
        users = check_request(user_ids, k)
        served = self.holder.peek()
        if len(users):
            done = self.parts.map(lambda part: self._lists(served, part, k), users)
            # one pool for the request, as if served whole: which pools are kept, and how the next
            # batch's lessons are shared between them, must not depend on the threads
            self._served_pools.add(ServedPool(users, self.state.history.stamps(users), served,
                                              Pool.concat([kept for _, kept in done])))
            recs = RecList.concat([lists for lists, _ in done])
        else:
            recs = RecList.empty(0, k, POPULARITY_VERSION if served is None else served.version)
        return ServedLists(recs, popular_list(self.state, served, k))

    def _lists(self, served: Served[ServingModel] | None, users: np.ndarray, k: int) -> tuple[RecList, Pool]:
        """``users``' lists with their reasons, and the pool they were served from. Parts of a request
        may run at once: this reads the state and writes only the vector cache (under its lock) and
        caches whose content does not depend on which part fills them (the popular songs, tables)."""
        rows = self.state.history.gather(users)  # one gather for the fold-in, the pool and the reasons
        candidates = user_pool(self.state, served, users, k, rows)
        keys, lists = recommend_keys(self.state, served, users, k, candidates)
        return explain(self.state, served, users, lists, keys=keys, rows=rows), candidates

    def similar(self, song_ids: np.ndarray, k: int = 10) -> RecList:
        songs = check_request(song_ids, k, "song_ids")
        served = self.holder.peek()
        if served is None:  # popularity knows no song's neighbours
            return RecList.empty(len(songs), k, POPULARITY_VERSION)
        return served.model.similar(songs, k, depth=self.config.candidates)
