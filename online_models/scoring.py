"""Scoring: candidates from several sources, merged, blended into one score, filtered and ranked.

A request reads the online state and one served model version (taken once by the caller) and goes:

1. **sources** each propose candidate songs per user and score every signal they can on them:
   the index (nearest songs to the user's folded-in vector: the ``cf`` signal) and popularity;
2. :meth:`Candidates.merge` puts them side by side (a song proposed twice keeps its first entry);
3. :func:`blend` turns the signals into one score (today ``β·cf + (1-β)·popularity``, β growing
   with what the model knows of the user);
4. seen songs are filtered, the top is taken, NeuMF re-ranks it for users it knows and MMR
   diversifies it.

A new signal (co-occurrence, a sequence model) is one more source and one more entry in
``Candidates.signals``; the blend is the one place that weighs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index_manager.holder import Served
from online_models.base import RecList
from online_models.foldin import confidences, fold_in, fold_in_cg
from online_models.history import UserRows
from online_models.ranking import mask_seen, mmr, repeats, take_top
from online_models.sasrec_serving import user_queries
from online_models.serving import ServingModel
from online_models.state import OnlineState

POPULARITY_VERSION = "popularity"  # the version lists carry while no model is served
RERANK_DEPTH = 50  # first-stage candidates NeuMF re-orders per user
SIGNALS = ("cf", "popularity")


@dataclass(frozen=True)
class Candidates:
    """Candidate songs per user, (U, M) arrays: song keys (-1 = none), whether each is within its
    source's width for that user, and every signal's score on it."""

    keys: np.ndarray
    in_width: np.ndarray
    signals: dict[str, np.ndarray]

    @staticmethod
    def merge(parts: list[Candidates]) -> Candidates:
        return Candidates(np.concatenate([p.keys for p in parts], axis=1),
                          np.concatenate([p.in_width for p in parts], axis=1),
                          {name: np.concatenate([p.signals[name] for p in parts], axis=1) for name in SIGNALS})

    def allowed(self) -> np.ndarray:
        """Within width, a real song, and its first entry in the row."""
        return self.in_width & (self.keys >= 0) & ~repeats(self.keys)


# -- the user side: fold-in -----------------------------------------------------------------------
def fold_in_rows(model: ServingModel, slots: np.ndarray, item_rows: np.ndarray, pos: np.ndarray,
                 neg: np.ndarray, n_users: int, x0: np.ndarray | None = None, steps: int = 0) -> np.ndarray:
    """User vectors against ``model``'s item factors from history rows (user slot, item row,
    engagement): the exact solve, or ``steps`` CG steps from ``x0``."""
    conf, pref = confidences(pos, neg, model.alpha)
    args = (model.index.factors, model.gram, slots, item_rows, conf, pref, n_users, model.regularization)
    return fold_in(*args) if x0 is None else fold_in_cg(*args, x0=x0, steps=steps)


def user_vectors(state: OnlineState, model: ServingModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Folded-in vectors of ``users`` against ``model`` and how many of their songs it knows.

    A user's vector is cached with the model version and their history's generation: unchanged
    users cost nothing, users with new events take a few CG steps from their previous vector,
    and the rest get the exact solve. A sequence model (SASRec) reads the recent plays instead."""
    if model.sequence is not None:
        return user_queries(state, model, users)
    rows = state.history.gather(users)
    item_rows = model.index.rows(rows.keys)
    usable = item_rows >= 0
    known = np.bincount(rows.slots[usable & (rows.pos > rows.neg)], minlength=len(users))
    stamps = state.history.stamps(users)
    vectors = np.zeros((len(users), model.index.dim), np.float32)
    how = np.zeros(len(users), np.int8)  # 0 exact, 1 warm start, 2 cached
    for i, user in enumerate(users):
        hit = state.vectors.get(user)
        if hit is not None and hit[0] == model.version:
            vectors[i] = hit[2]
            how[i] = 2 if hit[1] == stamps[i] else 1
    steps = state.config.foldin_cg_steps
    if steps == 0:
        how[how == 1] = 0
    slots, item_rows, pos, neg = rows.slots[usable], item_rows[usable], rows.pos[usable], rows.neg[usable]
    for kind in (0, 1):
        group = np.flatnonzero(how == kind)
        if not len(group):
            continue
        sel = np.isin(slots, group)
        remap = np.full(len(users), -1, np.int64)
        remap[group] = np.arange(len(group))
        vectors[group] = fold_in_rows(model, remap[slots[sel]], item_rows[sel], pos[sel], neg[sel], len(group),
                                      x0=None if kind == 0 else vectors[group], steps=steps)
    for j in np.flatnonzero(how < 2).tolist():
        state.vectors.put(users[j], model.version, int(stamps[j]), vectors[j])
    return vectors, known


# -- sources --------------------------------------------------------------------------------------
def index_candidates(model: ServingModel, vectors: np.ndarray, width: int
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


def from_index(state: OnlineState, model: ServingModel, vectors: np.ndarray, known: np.ndarray,
               width: np.ndarray, pop_top: float | None) -> Candidates:
    """The songs nearest each user's vector; none for a user the model knows nothing of."""
    keys, cf, rank = index_candidates(model, vectors, int(width.max()))
    popularity = (state.popularity.scores(keys) / pop_top).astype(np.float32) if pop_top is not None else \
        np.zeros(keys.shape, np.float32)
    keys = np.where((known == 0)[:, None], -1, keys)
    return Candidates(keys, rank < width[:, None], {"cf": np.where(keys >= 0, cf, 0.0), "popularity": popularity})


def from_popularity(state: OnlineState, model: ServingModel | None, vectors: np.ndarray | None,
                    n_users: int, width: np.ndarray) -> tuple[Candidates, float | None]:
    """The most popular songs now, the same for everyone; also the top count (the popularity scale,
    None before any play)."""
    pop_k, pop_c = state.popularity.top(int(width.max()))
    top = float(pop_c[0]) if len(pop_c) else None
    pop_norm = (pop_c / pop_c[0]).astype(np.float32) if len(pop_c) else pop_c.astype(np.float32)
    n_pop = len(pop_k)
    cf = np.zeros((n_users, n_pop), np.float32)
    if model is not None and vectors is not None and n_pop:
        rows = model.index.rows(pop_k)
        # einsum, not BLAS: a row's dot products must not depend on how many users share the call
        dots = np.einsum("uf,cf->uc", vectors, model.index.factors[np.maximum(rows, 0)])
        cf = np.where(rows >= 0, dots, 0.0).astype(np.float32)  # songs newer than the model score 0
    return Candidates(np.broadcast_to(pop_k, (n_users, n_pop)), np.arange(n_pop) < width[:, None],
                      {"cf": cf, "popularity": np.broadcast_to(pop_norm, (n_users, n_pop))}), top


def blend(candidates: Candidates, beta: np.ndarray) -> np.ndarray:
    """One score per candidate: ``β·cf + (1-β)·popularity`` with the user's β."""
    b = beta[:, None]
    return (b * candidates.signals["cf"] + (1.0 - b) * candidates.signals["popularity"]).astype(np.float32)


# -- ranking --------------------------------------------------------------------------------------
def rerank(model: ServingModel, users: np.ndarray, keys: np.ndarray, scores: np.ndarray, use: np.ndarray,
           depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Second stage: NeuMF reorders the candidates of the users at ``use`` (row indices); its logits
    become their scores. Songs NeuMF never saw (added from content) keep their place after the
    ones it scored; everyone else keeps the first stage."""
    ranker = model.ranker
    if ranker is not None and len(use):
        song_rows = ranker.song_rows(model.index.names_of(keys[use]))
        logits = ranker.score(ranker.user_rows(users[use]), np.maximum(song_rows, 0))
        logits = np.where((song_rows >= 0) & (keys[use] >= 0), logits, -np.inf)
        order = np.argsort(-logits, axis=1, kind="stable")
        keys[use] = np.take_along_axis(keys[use], order, axis=1)
        ordered = np.take_along_axis(logits, order, axis=1)
        scores[use] = np.where(np.isfinite(ordered), ordered, -np.inf)
    return keys[:, :depth], scores[:, :depth]


def recommend(state: OnlineState, served: Served[ServingModel] | None, users: np.ndarray, k: int) -> RecList:
    """Top-k per user from one candidate pool: the user's nearest songs in the index plus the most
    popular songs, scored ``β·cf + (1-β)·popularity`` with ``β = n / (n + cold_start_events)`` for a
    user with n songs the model knows. A new user therefore gets popularity, and the collaborative
    signal takes over as their history grows (no hard switch)."""
    config = state.config
    seen = state.history.gather(users)
    sizes = np.bincount(seen.slots, minlength=len(users))
    # each user's own candidate width keeps a user's answer independent of who shares the batch
    width = k + (np.zeros(len(users), np.int64) if config.relisten else np.minimum(sizes, config.candidates))
    beta = np.zeros(len(users), np.float32)
    model, version = (None, POPULARITY_VERSION) if served is None else served
    vectors = known = None
    if model is not None:
        vectors, known = user_vectors(state, model, users)
        n0 = config.cold_start_events
        beta = (known / (known + n0) if n0 > 0 else (known > 0)).astype(np.float32)
    popular, pop_top = from_popularity(state, model, vectors, len(users), width)
    parts = [popular]
    if model is not None and vectors is not None and known is not None:
        parts.insert(0, from_index(state, model, vectors, known, width, pop_top))
    candidates = Candidates.merge(parts)
    keys, top = _rank(state, model, users, candidates, blend(candidates, beta), beta, seen, k)
    return RecList(state.names_of(keys, None if model is None else model.index), top,
                   np.full(keys.shape, None, dtype=object), version)


def _rank(state: OnlineState, model: ServingModel | None, users: np.ndarray, candidates: Candidates,
          scores: np.ndarray, beta: np.ndarray, seen: UserRows, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Filter, take the top, re-rank (NeuMF) and diversify (MMR); (keys, scores) of k per user."""
    allowed = candidates.allowed()
    if not state.config.relisten:
        allowed &= ~mask_seen(candidates.keys, seen.slots, seen.keys)
    ranker = None if model is None else model.ranker
    diverse = model is not None and state.config.diversity > 0
    depth = max(k, RERANK_DEPTH) if ranker is not None or diverse else k
    keys, top = take_top(candidates.keys, scores, allowed, depth)
    if model is not None and ranker is not None:
        # users NeuMF was trained on and whose lists are mostly collaborative (β >= 1/2)
        use = np.flatnonzero((ranker.user_rows(users) >= 0) & (beta >= 0.5))
        keys, top = rerank(model, users, keys, top, use, depth)
    if model is not None and diverse:
        keys, top = mmr(keys, top, model.index, state.config.diversity, k)
    return keys[:, :k], top[:, :k]
