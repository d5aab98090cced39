"""The SASRec model alone behind the Recommender contract ("sequence"), served as the worker serves
a sasrec version.

``fit`` trains SASRec and builds the same artifact a retrain writes; ``partial_fit`` only learns the
batch into the online state (its recent plays move the user's sequence: no weight update, the next
state is one forward pass away); ``recommend`` takes each user's query from
:func:`online_models.sasrec_serving.user_queries` (the worker's code), searches the version's index
and filters what the user heard or skipped. Unlike the worker's blend, a user with a known play gets
the sequence model's answer alone; users without one get the live popularity list.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from online_models.base import RecList, Recommender, check_request
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.features import index_candidates
from online_models.ranking import mask_seen, take_top
from online_models.sasrec import BACKENDS, SASRecModel
from online_models.sasrec_serving import user_queries
from online_models.sasrec_spec import SASRecConfig
from online_models.sasrec_train import sasrec_artifact, train_sasrec
from online_models.serving import ServingModel
from online_models.state import OnlineState

VERSION = "sequence"


class SASRecRecommender(Recommender):
    """SASRec user states over the users' most recent plays, nearest songs in its index."""

    name = "sequence"

    def __init__(self, config: SASRecConfig | None = None, online: OnlineConfig | None = None,
                 backend: str = "torch") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown SASRec backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.config = config or SASRecConfig()
        self.online = online or OnlineConfig()
        self.backend = backend
        self.model: ServingModel | None = None
        self.state = OnlineState(self.online)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"config": SASRecConfig(factors=16, max_len=12, heads=2, dropout=0.0, negatives=16, epochs=30,
                                       patience=30, val_users=0)}

    def fit(self, events: EventBatch) -> None:
        if not isinstance(events, EventBatch):
            raise ValueError("events must be an EventBatch")
        self.load(train_sasrec(events, self.config, self.backend), events)

    def load(self, model: SASRecModel, events: EventBatch) -> None:
        """Serve ``model`` (trained elsewhere, e.g. on the other backend) with ``events`` as the history."""
        if not isinstance(model, SASRecModel) or not isinstance(events, EventBatch):
            raise ValueError("load needs a SASRecModel and an EventBatch")
        self.config = model.config
        self.state = OnlineState(self.online)
        self.state.learn(events.sorted_by_time())
        self.model = ServingModel.from_artifact(sasrec_artifact(model, events), VERSION)

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        if not isinstance(events, EventBatch):
            raise ValueError("events must be an EventBatch")
        return self.state.learn(events)

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        model = self.model
        if model is None:
            raise ValueError("fit() first")
        heard_slots, heard_keys = self.state.history.seen(users)
        sizes = np.bincount(heard_slots, minlength=len(users))
        # each user's own width keeps their answer independent of who shares the batch
        width = k + (np.zeros(len(users), np.int64) if self.online.relisten == "always" else sizes)
        vectors, known = user_queries(self.state, model, users)
        keys, scores, rank = index_candidates(model, vectors, min(int(width.max(initial=k)), len(model.index)))
        allowed = (rank < width[:, None]) & (known > 0)[:, None]
        ladder = self.state.popularity
        pop_k = ladder.top(int(width.max(initial=k)), ladder.best)
        pop_c = ladder.scores(pop_k)[:, ladder.best] if len(pop_k) else np.empty(0)
        cold = np.broadcast_to(pop_k, (len(users), len(pop_k)))
        # popularity only for users the model knows nothing of: below every model score, never mixed
        cold_ok = (known == 0)[:, None] & (np.arange(len(pop_k)) < width[:, None])
        keys = np.concatenate([keys, cold], axis=1)
        scores = np.concatenate([scores, np.broadcast_to(pop_c.astype(np.float32), cold.shape)], axis=1)
        allowed = np.concatenate([allowed, cold_ok], axis=1) & (keys >= 0)
        if self.online.relisten != "always":
            allowed &= ~mask_seen(keys, heard_slots, heard_keys)
        top_k, top_s = take_top(keys, scores, allowed, k)
        names = self.state.names_of(top_k, model.index)
        return RecList(names, top_s, np.full(top_k.shape, None, dtype=object), VERSION)
