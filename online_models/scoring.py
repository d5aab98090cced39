"""Scoring: a pool of candidates with their signals, one learned score, filtered and ranked.

A request reads the online state and one served model version (taken once by the caller) and goes:

1. the users' vectors are folded in against the version's item factors (cached per history);
2. :func:`online_models.features.pool` gathers candidates from every source (popularity,
   co-occurrence, the index) and scores every signal on each of them;
3. the state's :class:`~online_models.blend.Ranker` turns the signals into one score;
4. heard songs are filtered, the top is taken, NeuMF re-ranks it for users it knows and MMR
   diversifies it.

Learning goes through the same pool: before a batch is folded into the state, each sampled play
teaches the ranker which of its user's candidates was chosen (:func:`learn_ranker`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from index_manager.holder import Served
from online_models.base import RecList
from online_models.batch import PLAY, EventBatch
from online_models.features import LESSON_K, Pool, pool
from online_models.foldin import confidences, fold_in, fold_in_cg
from online_models.history import UserRows
from online_models.ranking import mmr, take_top
from online_models.sasrec_serving import user_queries
from online_models.serving import ServingModel
from online_models.state import OnlineState

POPULARITY_VERSION = "popularity"  # the version lists carry while no model is served
RERANK_DEPTH = 50  # first-stage candidates NeuMF re-orders per user
# plays whose user was not in the latest lists get pools of their own: at most this fraction of the
# lessons, and only every FRESH_EVERY batches, since each costs a request's work (a worker's small
# batches rarely repeat a user)
FRESH_SHARE = 32
FRESH_EVERY = 4
SERVED_USERS = 512  # users' pools kept for the lessons of their next plays (~15 kB each)


# -- the user side: fold-in -----------------------------------------------------------------------
def fold_in_rows(model: ServingModel, slots: np.ndarray, item_rows: np.ndarray, pos: np.ndarray,
                 neg: np.ndarray, n_users: int, x0: np.ndarray | None = None, steps: int = 0) -> np.ndarray:
    """User vectors against ``model``'s item factors from history rows (user slot, item row,
    engagement): the exact solve, or ``steps`` CG steps from ``x0``."""
    conf, pref = confidences(pos, neg, model.alpha)
    args = (model.index.factors, model.gram, slots, item_rows, conf, pref, n_users, model.regularization)
    return fold_in(*args) if x0 is None else fold_in_cg(*args, x0=x0, steps=steps)


def user_vectors(state: OnlineState, model: ServingModel, users: np.ndarray, rows: UserRows | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Folded-in vectors of ``users`` against ``model`` and how many of their songs it knows.

    A user's vector is cached with the model version and their history's generation: unchanged
    users cost nothing, users with new events take a few CG steps from their previous vector,
    and the rest get the exact solve. A sequence model (SASRec) reads the recent plays instead."""
    if model.sequence is not None:
        return user_queries(state, model, users)
    rows = state.history.gather(users) if rows is None else rows
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


def user_pool(state: OnlineState, served: Served[ServingModel] | None, users: np.ndarray, k: int,
              rows: UserRows | None = None) -> Pool:
    """The users' candidates and signals under ``served`` (their vectors folded in first); ``rows``:
    their history rows, when the caller has them (one gather serves the fold-in and the pool)."""
    rows = state.history.gather(users) if rows is None else rows
    if served is None:
        return pool(state, None, users, k, rows=rows)
    vectors, known = user_vectors(state, served.model, users, rows)
    return pool(state, served, users, k, vectors, known, rows)


def recommend(state: OnlineState, served: Served[ServingModel] | None, users: np.ndarray, k: int,
              candidates: Pool | None = None) -> RecList:
    """Top-k per user: the ranker's score over the pool (``candidates``, when the caller has it)."""
    return recommend_keys(state, served, users, k, candidates)[1]


def recommend_keys(state: OnlineState, served: Served[ServingModel] | None, users: np.ndarray, k: int,
                   candidates: Pool | None = None) -> tuple[np.ndarray, RecList]:
    """:func:`recommend`, with the song keys of the lists (-1 pads) for callers that go on with them."""
    p = candidates if candidates is not None else user_pool(state, served, users, k)
    model, version = (None, POPULARITY_VERSION) if served is None else served
    scores = state.ranker.score(p.features, p.sizes).astype(np.float32)
    keys, top = _rank(state, model, users, p, scores, k)
    return keys, RecList(state.names_of(keys, None if model is None else model.index), top,
                         np.full(keys.shape, None, dtype=object), version)


@dataclass(frozen=True, eq=False)
class ServedPool:
    """The pool behind the latest lists served, and the histories and version it was computed from:
    when one of these users plays next, that pool is exactly what the play chose from."""

    users: np.ndarray
    stamps: np.ndarray
    served: Served[ServingModel] | None
    pool: Pool


class ServedPools:
    """The pools behind the latest lists served, newest last, holding at most ``max_users`` users'
    rows in all (a worker's batches are small when the stream is quiet: a user's previous play is
    then several batches back)."""

    def __init__(self, max_users: int = SERVED_USERS) -> None:
        self.max_users = max_users
        self._pools: deque[ServedPool] = deque()
        self._users = 0
        # user -> (pool, row) of their newest pool: one lookup per user, not one sorted search per pool
        self._latest: dict[object, tuple[ServedPool, int]] = {}

    def add(self, pool: ServedPool) -> None:
        self._pools.append(pool)
        self._users += len(pool.users)
        self._latest.update(zip(pool.users.tolist(), ((pool, row) for row in range(len(pool.users))), strict=True))
        while len(self._pools) > 1 and self._users > self.max_users:
            old = self._pools.popleft()
            self._users -= len(old.users)
            for user in old.users.tolist():
                if (entry := self._latest.get(user)) is not None and entry[0] is old:
                    del self._latest[user]

    def clear(self) -> None:
        self._pools.clear()
        self._latest.clear()
        self._users = 0

    def find(self, users: np.ndarray, stamps: np.ndarray, served: Served[ServingModel] | None
             ) -> list[tuple[Pool, np.ndarray, np.ndarray]]:
        """(pool, indices into ``users``, rows in that pool) for users served since their history last
        moved (from the newest pool that served them), newest pool first."""
        get = self._latest.get
        hits: dict[int, tuple[ServedPool, list[int], list[int]]] = {}
        for i, (user, stamp) in enumerate(zip(users.tolist(), stamps.tolist(), strict=True)):
            entry = get(user)
            if entry is None:
                continue
            pool, row = entry
            if pool.served is not served or pool.stamps[row] != stamp:
                continue
            hit = hits.setdefault(id(pool), (pool, [], []))
            hit[1].append(i)
            hit[2].append(row)
        order = {id(p): n for n, p in enumerate(self._pools)}
        return [(pool.pool, np.array(idx, np.int64), np.array(rows, np.int64))
                for pool, idx, rows in sorted(hits.values(), key=lambda h: -order[id(h[0])])]


def learn_ranker(state: OnlineState, served: Served[ServingModel] | None, events: EventBatch,
                 pools: ServedPools | None = None, fresh: bool = True) -> int:
    """Before ``events`` are folded in: sampled plays teach the ranker which of their user's
    candidates was chosen, and every play counts for the popularity half-life that predicted it.
    A play whose user was served since their previous event learns from that pool (exactly what
    it chose from); when no play of the batch was, and ``fresh`` allows, a few get pools of their
    own. Returns the plays learnt from."""
    plays = np.flatnonzero(events.kinds == PLAY)
    if not len(plays):
        return 0
    config = state.config
    users_of = events.user_ids[plays]
    played = events.song_keys[plays]
    heard = state.history.sizes(users_of)
    state.popularity.observe(played, LESSON_K + np.minimum(heard, config.candidates))
    if config.ranker_lessons == 0:
        return 0
    found = [] if pools is None else pools.find(users_of, state.history.stamps(users_of), served)
    n_found = sum(len(idx) for _, idx, _ in found)
    learnt = 0
    for served_pool, idx, rows in found:  # each pool's share of an even sample of the lessons
        share = max(1, round(config.ranker_lessons * len(idx) / n_found)) if n_found > config.ranker_lessons \
            else len(idx)
        pick = _even_sample(np.arange(len(idx)), share)
        learnt += _lesson(state, served_pool, rows[pick], played[idx[pick]])
    if not n_found and fresh:
        fresh_plays = _even_sample(np.arange(len(plays)), max(config.ranker_lessons // FRESH_SHARE, 1))
        users, inv = np.unique(users_of[fresh_plays], return_inverse=True)
        learnt += _lesson(state, user_pool(state, served, users, LESSON_K), inv, played[fresh_plays])
    return learnt


def _even_sample(idx: np.ndarray, n: int) -> np.ndarray:
    return idx if len(idx) <= n else idx[np.linspace(0, len(idx) - 1, n).astype(np.int64)]


def _lesson(state: OnlineState, p: Pool, rows: np.ndarray, played: np.ndarray) -> int:
    match = (p.keys[rows] == played[:, None]) & p.allowed[rows]
    chosen = np.where(match.any(axis=1), np.argmax(match, axis=1), -1)
    return state.ranker.learn(p.features[rows], p.allowed[rows], chosen, p.sizes[rows])


def _forgotten_since(state: OnlineState, model: ServingModel, users: np.ndarray) -> np.ndarray:
    """Users forgotten after ``model``'s training data ends: its row for them is their erased past."""
    if not state.forgotten:
        return np.zeros(len(users), bool)
    get = state.forgotten.get
    return np.fromiter((get(u, -np.inf) > model.trained_until for u in users), bool, count=len(users))


def _rank(state: OnlineState, model: ServingModel | None, users: np.ndarray, p: Pool, scores: np.ndarray,
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """Take the top of the allowed candidates, re-rank (NeuMF) and diversify (MMR); k per user."""
    ranker = None if model is None else model.ranker
    diverse = model is not None and state.config.diversity > 0
    depth = max(k, RERANK_DEPTH) if ranker is not None or diverse else k
    keys, top = take_top(p.keys, scores, p.allowed, depth)
    if model is not None and ranker is not None:
        # users NeuMF was trained on whose lists are mostly collaborative: it knows enough of their songs
        n0 = state.config.cold_start_events
        use = np.flatnonzero((ranker.user_rows(users) >= 0) & (p.known >= max(n0, 1e-9))
                             & ~_forgotten_since(state, model, users))
        keys, top = rerank(model, users, keys, top, use, depth)
    if model is not None and diverse:
        keys, top = mmr(keys, top, model.index, state.config.diversity, k)
    return keys[:, :k], top[:, :k]
