"""The product's recommender: ALS item factors from the last retrain, user vectors folded in online."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from index_manager.artifacts import ModelArtifact, new_version_name
from index_manager.holder import ModelHolder
from index_manager.keys import song_keys
from index_manager.song_index import SongIndex
from online_models.als import train_als
from online_models.base import RecList, Recommender, check_request
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.foldin import confidences, fold_in, fold_in_cg
from online_models.history import HistoryStore
from online_models.interactions import Interactions
from online_models.popularity import DecayedCounts
from online_models.ranking import first_occurrence_mask, mask_seen, take_top
from online_models.serving import ServingModel

POPULARITY_VERSION = "popularity"
RERANK_DEPTH = 50  # first-stage candidates NeuMF re-orders per user


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
        self._vectors: OrderedDict[str, tuple[str, int, np.ndarray]] = OrderedDict()

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
        self._vectors.clear()

    def sharing_state(self, holder: ModelHolder[ServingModel]) -> OnlineALS:
        """A recommender over the same users' histories (and popularity) serving ``holder``'s model:
        the second arm of an A/B test. Learning through either one updates both."""
        view = OnlineALS(self.config, holder)
        # the vector cache is shared too: it is keyed by model version, and a user is in one arm
        view.history, view.popularity, view._names, view._vectors = \
            self.history, self.popularity, self._names, self._vectors
        return view

    def install(self, model: ServingModel) -> bool:
        """Swap in a model built and checked aside; False if it is not newer than the current one."""
        return self.holder.swap(model, model.version)

    def install_artifact(self, artifact: ModelArtifact) -> bool:
        return self.install(ServingModel.from_artifact(artifact))

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        if len(events) == 0:
            return np.empty(0, dtype=object)
        keys, first = np.unique(events.song_keys, return_index=True)
        names = self._names
        for key, i in zip(keys.tolist(), first.tolist(), strict=True):
            if key not in names:
                names[key] = events.song_ids[i]
        self.popularity.update(events)
        return self.history.update(events)

    # -- recommending -------------------------------------------------------------------------
    def user_vectors(self, model: ServingModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Folded-in vectors of ``users`` against ``model`` and how many of their songs it knows.

        A user's vector is cached with the model version and their history's generation: unchanged
        users cost nothing, users with new events take a few CG steps from their previous vector,
        and the rest get the exact solve."""
        rows = self.history.gather(users)
        item_rows = model.index.rows(rows.keys)
        usable = item_rows >= 0
        known = np.bincount(rows.slots[usable & (rows.pos > rows.neg)], minlength=len(users))
        stamps = self.history.stamps(users)
        vectors = np.zeros((len(users), model.index.dim), np.float32)
        state = np.zeros(len(users), np.int8)  # 0 exact, 1 warm start, 2 cached
        for i, user in enumerate(users):
            hit = self._vectors.get(user)
            if hit is not None and hit[0] == model.version:
                vectors[i] = hit[2]
                state[i] = 2 if hit[1] == stamps[i] else 1
        steps = self.config.foldin_cg_steps
        if steps == 0:
            state[state == 1] = 0
        conf, pref = confidences(rows.pos[usable], rows.neg[usable], model.alpha)
        for kind in (0, 1):
            group = np.flatnonzero(state == kind)
            if not len(group):
                continue
            sel = np.isin(rows.slots[usable], group)
            remap = np.full(len(users), -1, np.int64)
            remap[group] = np.arange(len(group))
            args = (model.index.factors, model.gram, remap[rows.slots[usable][sel]], item_rows[usable][sel],
                    conf[sel], pref[sel], len(group), model.regularization)
            vectors[group] = fold_in(*args) if kind == 0 else fold_in_cg(*args, x0=vectors[group], steps=steps)
        if self.config.vector_cache:
            for j in np.flatnonzero(state < 2).tolist():
                self._vectors[users[j]] = (model.version, int(stamps[j]), vectors[j])
                self._vectors.move_to_end(users[j])
            while len(self._vectors) > self.config.vector_cache:
                self._vectors.popitem(last=False)
        return vectors, known

    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        """Top-k per user from one candidate pool: the user's nearest songs in the index plus the
        most popular songs, scored ``β·cf + (1-β)·popularity`` with ``β = n / (n + cold_start_events)``
        for a user with n songs the model knows. A new user therefore gets popularity, and the
        collaborative signal takes over as their history grows (no hard switch)."""
        users = check_request(user_ids, k)
        pair = self.holder.peek()
        seen = self.history.gather(users)
        sizes = np.bincount(seen.slots, minlength=len(users))
        # each user's own candidate width keeps a user's answer independent of who shares the batch
        width = k + (np.zeros(len(users), np.int64) if self.config.relisten
                     else np.minimum(sizes, self.config.candidates))
        w_max = int(width.max())
        pop_k, pop_c = self.popularity.top(w_max)
        pop_norm = (pop_c / pop_c[0]).astype(np.float32) if len(pop_c) else pop_c.astype(np.float32)
        n_pop = len(pop_k)
        cand_k = np.broadcast_to(pop_k, (len(users), n_pop))
        cand_pop = np.broadcast_to(pop_norm, (len(users), n_pop))
        cand_cf = np.zeros((len(users), n_pop), np.float32)
        beta = np.zeros(len(users), np.float32)
        version = POPULARITY_VERSION
        model = None
        if pair is not None:
            model, version = pair
            vectors, known = self.user_vectors(model, users)
            n0 = self.config.cold_start_events
            beta = (known / (known + n0) if n0 > 0 else (known > 0)).astype(np.float32)
            ann_k, ann_cf, ann_rank = self._ann_candidates(model, vectors, w_max)
            pop_rows = model.index.rows(pop_k)
            # einsum, not BLAS: a row's dot products must not depend on how many users share the call
            pop_cf = np.einsum("uf,cf->uc", vectors, model.index.factors[np.maximum(pop_rows, 0)]) \
                if n_pop else cand_cf
            pop_cf = np.where(pop_rows >= 0, pop_cf, 0.0).astype(np.float32)  # songs newer than the model
            ann_pop = (self.popularity.scores(ann_k) / pop_c[0]).astype(np.float32) if n_pop else \
                np.zeros(ann_k.shape, np.float32)
            cold = known == 0
            ann_k = np.where(cold[:, None], -1, ann_k)  # a user the model knows nothing of: no CF pool
            cand_k = np.concatenate([ann_k, cand_k], axis=1)
            cand_cf = np.concatenate([np.where(ann_k >= 0, ann_cf, 0.0), pop_cf], axis=1)
            cand_pop = np.concatenate([ann_pop, cand_pop], axis=1)
            in_width = np.concatenate([ann_rank < width[:, None], np.arange(n_pop) < width[:, None]], axis=1)
        else:
            in_width = np.arange(n_pop) < width[:, None]
        scores = beta[:, None] * cand_cf + (1.0 - beta[:, None]) * cand_pop
        allowed = in_width & (cand_k >= 0) & ~first_occurrence_mask(cand_k)
        if not self.config.relisten:
            allowed &= ~mask_seen(cand_k, seen.slots, seen.keys)
        rerank = model is not None and model.ranker is not None
        diverse = model is not None and self.config.diversity > 0
        depth = max(k, RERANK_DEPTH) if rerank or diverse else k
        keys, top = take_top(cand_k, scores.astype(np.float32), allowed, depth)
        if rerank:
            keys, top = self._rerank(model, users, keys, top, beta, depth)  # type: ignore[arg-type]
        if diverse:
            keys, top = mmr(keys, top, model.index, self.config.diversity, k)  # type: ignore[union-attr]
        keys, top = keys[:, :k], top[:, :k]
        names = self._names_of(keys, model)
        return RecList(names, top, np.full(keys.shape, None, dtype=object), version)

    def _rerank(self, model: ServingModel, users: np.ndarray, keys: np.ndarray, scores: np.ndarray,
                beta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Second stage: NeuMF reorders the first stage's top candidates of users it was trained on
        and whose lists are mostly collaborative (β >= 1/2); everyone else keeps the first stage."""
        ranker = model.ranker
        assert ranker is not None
        rows = ranker.user_rows(users)
        use = np.flatnonzero((rows >= 0) & (beta >= 0.5))
        if len(use):
            song_rows = ranker.song_rows(model.index.names_of(keys[use]))
            logits = ranker.score(rows[use], np.maximum(song_rows, 0))
            # songs NeuMF never saw (added from content) keep their place after the ones it scored
            logits = np.where((song_rows >= 0) & (keys[use] >= 0), logits, -np.inf)
            order = np.argsort(-logits, axis=1, kind="stable")
            keys[use] = np.take_along_axis(keys[use], order, axis=1)
            scores[use] = np.where(np.isfinite(np.take_along_axis(logits, order, axis=1)),
                                   np.take_along_axis(logits, order, axis=1), -np.inf)
        return keys[:, :k], scores[:, :k]

    @staticmethod
    def _ann_candidates(model: ServingModel, vectors: np.ndarray, width: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index candidates with exactly recomputed scores and each one's rank among them.

        The index's own scores depend on how many queries share a call (FAISS switches to BLAS for
        batches), so a few extra candidates are fetched and re-scored row by row: a user's answer is
        then the same whether asked alone or in a batch."""
        fetch = min(width + max(8, width // 8), len(model.index))
        keys, _ = model.index.search(vectors, fetch)
        rows = model.index.rows(keys)
        exact = np.full(keys.shape, -np.inf, np.float32)
        for start in range(0, len(keys), 512):  # bounds the (users x candidates x f) gather
            part = slice(start, start + 512)
            r = rows[part]
            cand = model.index.factors[np.maximum(r, 0)]
            dots = np.matmul(cand, vectors[part].astype(np.float32)[..., None])[..., 0]
            exact[part] = np.where(r >= 0, dots, -np.inf)
        order = np.lexsort((keys, -exact), axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(keys.shape[1]), axis=1)
        return keys, np.where(np.isfinite(exact), exact, 0.0).astype(np.float32), rank

    def explain(self, users: np.ndarray, recs: RecList, recent: int = 20) -> RecList:
        """Fill ``reasons``: for each recommended song, the song among the user's ``recent`` latest
        plays it is most similar to (cosine of item factors): "because you played X"; songs the
        user's history says nothing about are "popular now"."""
        pair = self.holder.peek()
        filled = recs.song_ids != ""
        reasons = np.full(recs.song_ids.shape, None, dtype=object)
        reasons[filled] = "popular now"
        if pair is None or not len(users):
            return RecList(recs.song_ids, recs.scores, reasons, recs.version)
        model = pair[0]
        rows = self.history.gather(users)
        item_rows = model.index.rows(rows.keys)
        ok = (item_rows >= 0) & (rows.pos > rows.neg)
        slots, item_rows, last = rows.slots[ok], item_rows[ok], rows.last_ts[ok]
        order = np.lexsort((-last, slots))
        slots, item_rows = slots[order], item_rows[order]
        start = np.searchsorted(slots, np.arange(len(users)))
        rank = np.arange(len(slots)) - start[slots]
        keep = rank < recent
        hist = np.full((len(users), recent), -1, np.int64)
        hist[slots[keep], rank[keep]] = item_rows[keep]
        unit = model.index.unit_factors
        rec_rows = model.index.rows(song_keys(recs.song_ids.ravel())).reshape(recs.song_ids.shape)
        sims = np.einsum("ukf,uhf->ukh", unit[np.maximum(rec_rows, 0)], unit[np.maximum(hist, 0)])
        sims = np.where((hist >= 0)[:, None, :], sims, -np.inf)
        best = np.argmax(sims, axis=2)
        found = np.isfinite(np.max(sims, axis=2)) & (rec_rows >= 0)
        source = model.index.names[np.take_along_axis(hist, best, axis=1)]
        explained = found & filled
        reasons[explained] = [f"because you played {s}" for s in source[explained]]
        return RecList(recs.song_ids, recs.scores, reasons, recs.version)

    def popular(self, k: int) -> RecList:
        """The cold-start list: the ``k`` most popular songs now (one row)."""
        keys, counts = self.popularity.top(k)
        pair = self.holder.peek()
        row_k = np.full((1, k), -1, np.int64)
        row_s = np.full((1, k), -np.inf, np.float32)
        row_k[0, :len(keys)], row_s[0, :len(keys)] = keys, counts
        return RecList(self._names_of(row_k, pair[0] if pair else None), row_s,
                       np.full((1, k), None, dtype=object), pair[1] if pair else POPULARITY_VERSION)

    def _names_of(self, keys: np.ndarray, model: ServingModel | None) -> np.ndarray:
        names = model.index.names_of(keys) if model is not None else np.full(keys.shape, "", dtype=object)
        missing = (names == "") & (keys >= 0)
        if missing.any():
            names[missing] = [self._names.get(int(x), "") for x in keys[missing]]
        return names



def mmr(keys: np.ndarray, scores: np.ndarray, index: SongIndex, trade_off: float, k: int
        ) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998) over each row's candidates: pick, k times,
    the song maximising (1-λ)·relevance - λ·(max cosine similarity to the songs already picked).
    Relevance is the row's scores scaled to [0, 1]; rows are processed together, one step per pick."""
    n, m = keys.shape
    rows = index.rows(keys.ravel()).reshape(keys.shape)
    valid = (keys >= 0) & np.isfinite(scores) & (rows >= 0)
    unit = index.unit_factors
    vec = unit[np.maximum(rows, 0)]
    sim = np.einsum("umf,ujf->umj", vec, vec)
    s = np.where(valid, scores, np.nan)
    lo, hi = np.nanmin(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True), \
        np.nanmax(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True)
    rel = np.where(valid, (np.nan_to_num(s) - lo) / np.maximum(hi - lo, 1e-12), -np.inf)
    picked = np.full((n, min(k, m)), -1, np.int64)
    max_sim = np.zeros((n, m))
    available = valid.copy()
    for step in range(picked.shape[1]):
        value = np.where(available, (1 - trade_off) * rel - trade_off * max_sim, -np.inf)
        choice = np.argmax(value, axis=1)
        has = np.isfinite(value[np.arange(n), choice])
        picked[has, step] = choice[has]
        available[np.arange(n)[has], choice[has]] = False
        max_sim = np.maximum(max_sim, np.where(has[:, None], sim[np.arange(n), choice], 0.0))
    out_k = np.where(picked >= 0, np.take_along_axis(keys, np.maximum(picked, 0), axis=1), -1)
    out_s = np.where(picked >= 0, np.take_along_axis(scores, np.maximum(picked, 0), axis=1), -np.inf)
    return out_k, out_s.astype(np.float32)
