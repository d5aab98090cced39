"""The product's recommender: ALS item factors from the last retrain, user vectors folded in online."""

from __future__ import annotations

import numpy as np

from index_manager.artifacts import ModelArtifact, new_version_name
from index_manager.holder import ModelHolder
from online_models.als import train_als
from online_models.base import RecList, Recommender, check_request
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.foldin import confidences, fold_in
from online_models.history import HistoryStore, UserRows
from online_models.interactions import Interactions
from online_models.popularity import DecayedCounts
from online_models.ranking import mask_seen, merge_fill, take_top
from online_models.serving import ServingModel

POPULARITY_VERSION = "popularity"


class OnlineALS(Recommender):
    """Learns every event: the user's decayed history is updated and their vector re-solved against
    the current item factors (fold-in) before their list is recomputed.

    The item side (``ServingModel``) lives in a :class:`ModelHolder` and is swapped whole when a
    retrain publishes a new version; the user side (histories) is kept across swaps, so users are
    simply re-folded against the new factors. Without any model, lists come from popularity.
    """

    name = "online"

    def __init__(self, config: OnlineConfig | None = None,
                 holder: ModelHolder[ServingModel] | None = None) -> None:
        self.config = config or OnlineConfig()
        self.holder: ModelHolder[ServingModel] = holder or ModelHolder()
        self.history = HistoryStore(self.config.half_life_days, self.config.max_history,
                                    self.config.full_play_ms, self.config.skip_weight)
        self.popularity = DecayedCounts(self.config.popularity_half_life_days)
        self._names: dict[int, str] = {}

    # -- learning -----------------------------------------------------------------------------
    def fit(self, events: EventBatch) -> None:
        """Train ALS on ``events`` and serve it; the events also become the users' online history."""
        self.reset_state()
        self.partial_fit(events.sorted_by_time())
        artifact = train_als(Interactions.from_events(events, self.config), self.config,
                             trained_on={"ts_min": float(events.ts.min()), "ts_max": float(events.ts.max()),
                                         "n_events": len(events)})
        artifact.version = new_version_name("als")
        self.install(ServingModel.from_artifact(artifact))

    def reset_state(self) -> None:
        self.history = HistoryStore(self.config.half_life_days, self.config.max_history,
                                    self.config.full_play_ms, self.config.skip_weight)
        self.popularity = DecayedCounts(self.config.popularity_half_life_days)
        self._names = {}

    def install(self, model: ServingModel) -> bool:
        """Swap in a model built and checked aside; False if it is not newer than the current one."""
        return self.holder.swap(model, model.version)

    def install_artifact(self, artifact: ModelArtifact) -> bool:
        return self.install(ServingModel.from_artifact(artifact))

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        if len(events) == 0:
            return np.empty(0, dtype=object)
        keys = events.song_keys
        new = ~np.isin(keys, np.fromiter(self._names, np.int64, len(self._names)))
        if new.any():
            self._names.update(zip(keys[new].tolist(), events.song_ids[new].tolist(), strict=True))
        self.popularity.update(events)
        return self.history.update(events)

    # -- recommending -------------------------------------------------------------------------
    def user_vectors(self, model: ServingModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Folded-in vectors of ``users`` against ``model`` and how many of their songs it knows."""
        rows = self.history.gather(users)
        item_rows = model.index.rows(rows.keys)
        usable = item_rows >= 0
        conf, pref = confidences(rows.pos[usable], rows.neg[usable], model.alpha)
        vectors = fold_in(model.index.factors, model.gram, rows.slots[usable], item_rows[usable],
                          conf, pref, len(users), model.regularization)
        known = np.bincount(rows.slots[usable & (rows.pos > rows.neg)], minlength=len(users))
        return vectors, known

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        users = check_request(user_ids, k)
        pair = self.holder.peek()
        seen = self.history.gather(users)
        sizes = np.bincount(seen.slots, minlength=len(users))
        per_user_extra = np.zeros(len(users), np.int64) if self.config.relisten else \
            np.minimum(sizes, self.config.candidates)
        keys = np.full((len(users), k), -1, np.int64)
        scores = np.full((len(users), k), -np.inf, np.float32)
        version = POPULARITY_VERSION
        if pair is not None:
            model, version = pair
            vectors, known = self.user_vectors(model, users)
            warm = np.flatnonzero(known > 0)
            if len(warm):
                limit = k + per_user_extra[warm]
                cand_k, cand_s = model.index.search(vectors[warm], int(limit.max()))
                cand_k = np.where(np.arange(cand_k.shape[1]) < limit[:, None], cand_k, -1)
                allowed = np.ones(cand_k.shape, bool) if self.config.relisten else \
                    ~self._seen_mask(cand_k, seen, warm)
                keys[warm], scores[warm] = take_top(cand_k, cand_s, allowed, k)
        keys, scores = self._fill_popular(users, keys, scores, seen, per_user_extra, k)
        names = self._names_of(keys, pair[0] if pair else None)
        return RecList(names, scores, np.full(keys.shape, None, dtype=object), version)

    def popular(self, k: int) -> RecList:
        """The cold-start list: the ``k`` most popular songs now (one row)."""
        keys, counts = self.popularity.top(k)
        pair = self.holder.peek()
        row_k = np.full((1, k), -1, np.int64)
        row_s = np.full((1, k), -np.inf, np.float32)
        row_k[0, :len(keys)], row_s[0, :len(keys)] = keys, counts
        return RecList(self._names_of(row_k, pair[0] if pair else None), row_s,
                       np.full((1, k), None, dtype=object), pair[1] if pair else POPULARITY_VERSION)

    def _seen_mask(self, cand: np.ndarray, seen: UserRows, rows: np.ndarray) -> np.ndarray:
        sel = np.isin(seen.slots, rows)
        remap = np.full(max(int(seen.slots.max(initial=-1)), int(rows.max(initial=-1))) + 1, -1, np.int64)
        remap[rows] = np.arange(len(rows))
        return mask_seen(cand, remap[seen.slots[sel]], seen.keys[sel])

    def _fill_popular(self, users: np.ndarray, keys: np.ndarray, scores: np.ndarray, seen: UserRows,
                      per_user_extra: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        short = np.flatnonzero((keys < 0).any(axis=1))
        if not len(short):
            return keys, scores
        width = k + int(per_user_extra[short].max(initial=0))
        pop_k, pop_s = self.popularity.top(width)
        if not len(pop_k):
            return keys, scores
        cand_k = np.broadcast_to(pop_k, (len(short), len(pop_k))).copy()
        # popularity scores sit below any CF score of the same list: they only fill its tail
        cand_s = np.broadcast_to(-1e6 + np.log1p(pop_s).astype(np.float32), cand_k.shape).copy()
        allowed = np.ones(cand_k.shape, bool) if self.config.relisten else \
            ~self._seen_mask(cand_k, seen, short)
        cand_k, cand_s = take_top(cand_k, cand_s, allowed, k)
        keys[short], scores[short] = merge_fill(keys[short], scores[short], cand_k, cand_s, k)
        return keys, scores

    def _names_of(self, keys: np.ndarray, model: ServingModel | None) -> np.ndarray:
        names = model.index.names_of(keys) if model is not None else np.full(keys.shape, "", dtype=object)
        missing = (names == "") & (keys >= 0)
        if missing.any():
            names[missing] = [self._names.get(int(x), "") for x in keys[missing]]
        return names

