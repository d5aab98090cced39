"""Candidates and the signals the ranker weighs: one pool per request, the same for serving and learning.

Three sources propose songs for each user: popularity (at every half-life of the ladder), songs
co-played with the user's latest plays, and the index's nearest songs to the user's folded-in
vector. Every signal is then scored on every candidate, whatever proposed it:

* ``pop@h``: log of the song's popularity at half-life h relative to the most popular song;
* ``popularity``: the same at the half-life whose lists caught the most plays so far;
* ``cooc`` / ``cooc_norm``: log of the co-occurrence votes from the user's latest plays (raw, and
  divided by the square root of both songs' plays), relative to the user's best candidate;
* ``cf``: the dot product of the user's folded-in vector and the song's factors (0 when unknown);
* with ``relisten = learn``, what the user did with the song themselves: ``heard`` (1 if they
  played or skipped it), ``heard_recency`` (-log of how many plays ago they last played it, past
  the window of latest plays counting as one more), ``heard_plays`` and ``heard_skips`` (log1p of
  their decayed engagement). The user's latest k plays then join the candidates: whether people go
  back to songs is a habit of each stream (a fifth of Last.fm's plays, none of MovieLens's ratings),
  so the ranker learns it instead of a rule deciding it.

A user's pool depends only on their own state, never on who shares the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from index_manager.holder import Served
from online_models.blend import Ranker
from online_models.config import OnlineConfig
from online_models.cooc import CoocQuery
from online_models.history import UserRows
from online_models.ranking import mask_seen, repeats, slot_key_codes

if TYPE_CHECKING:
    from online_models.serving import ServingModel
    from online_models.state import OnlineState

_POP_FLOOR = 1e-6  # log floor of relative popularity (a song never played)
_VOTE_FLOOR = 1e-4  # log floor of relative co-occurrence votes (none)
LESSON_K = 10  # list length a lesson assumes when it sizes the popularity candidates


def feature_names(config: OnlineConfig) -> tuple[str, ...]:
    heard = ("heard", "heard_recency", "heard_plays", "heard_skips") if config.relisten == "learn" else ()
    return (*(f"pop@{h:g}" for h in config.half_lives), "popularity", "cooc", "cooc_norm", "cf", *heard)


def new_ranker(config: OnlineConfig) -> Ranker:
    """An untrained ranker that serves the adaptive popularity list until the stream teaches it more."""
    names = feature_names(config)
    initial = np.zeros(len(names))
    initial[names.index("popularity")] = 1.0
    return Ranker(len(names), config.ranker_hidden, learning_rate=config.ranker_learning_rate,
                  initial=initial, seed=config.seed)


@dataclass(frozen=True)
class Pool:
    """Per user (rows): candidate song keys (U, M), which may be served (a real song, its first
    entry, within its source's width, not heard when relistening is off), their signals (U, M, d),
    the user's history size (the ranker's bucket) and how many of their songs the model knows."""

    keys: np.ndarray
    allowed: np.ndarray
    features: np.ndarray
    sizes: np.ndarray
    known: np.ndarray

    @staticmethod
    def concat(parts: Sequence[Pool]) -> Pool:
        """The users of ``parts`` in order, as the pool of one call over all of them: rows padded to
        the widest part with entries no list or lesson reads (key -1, not allowed)."""
        if not parts:
            raise ValueError("concat needs at least one pool")
        if len(parts) == 1:
            return parts[0]
        width = max(p.keys.shape[1] for p in parts)

        def padded(a: np.ndarray, fill: float | bool) -> np.ndarray:
            if a.shape[1] == width:
                return a
            out = np.full((a.shape[0], width, *a.shape[2:]), fill, a.dtype)
            out[:, :a.shape[1]] = a
            return out

        return Pool(np.concatenate([padded(p.keys, -1) for p in parts]),
                    np.concatenate([padded(p.allowed, False) for p in parts]),
                    np.concatenate([padded(p.features, 0.0) for p in parts]),
                    np.concatenate([p.sizes for p in parts]), np.concatenate([p.known for p in parts]))


def _popular(state: OnlineState, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most popular songs at the half-life that predicts best, and each one's rank. (The other
    half-lives' top songs add nothing here: measured on the early half of both logs.)"""
    top = state.top_popular(int(widths.max(initial=0)))
    return top, np.arange(len(top))


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


def _relative_log(values: np.ndarray, top: np.ndarray, floor: float) -> np.ndarray:
    """log(v / top + floor) per row (``top``: the row's largest value over every song, so a user's
    features do not depend on which candidates share the row); non-positive values sit at the floor."""
    return np.log(np.maximum(values, 0.0) / np.maximum(top, 1e-300)[:, None] + floor)


def pool(state: OnlineState, served: Served[ServingModel] | None, users: np.ndarray, k: int,
         vectors: np.ndarray | None = None, known: np.ndarray | None = None, rows: UserRows | None = None) -> Pool:
    """Candidates and signals for ``users`` under the served version (or popularity and co-occurrence
    alone before any version); ``vectors``/``known`` are the users' folded-in vectors, if computed;
    ``rows`` their history rows, if the caller gathered them."""
    config = state.config
    n = len(users)
    rows = state.history.gather(users) if rows is None else rows
    heard_slots, heard_keys = state.history.seen(users, rows)
    sizes = np.bincount(heard_slots, minlength=n)
    always = config.relisten == "always"
    widths = k + (np.zeros(n, np.int64) if always else np.minimum(sizes, config.candidates))
    pop_keys, pop_rank = _popular(state, widths)
    recent = state.recent.gather(users, config.cooc_query)
    query = state.cooc.query(recent)
    # the other sources propose songs the user has not heard; with `learn` their latest k plays
    # compete beside them, most recent first
    skip = None if always else (heard_slots, heard_keys)
    blocks = [np.broadcast_to(pop_keys, (n, len(pop_keys))), query.top(config.cooc_candidates, skip)]
    in_width = [pop_rank[None, :] < widths[:, None], np.ones(blocks[1].shape, bool)]
    if config.relisten == "learn":
        blocks.append(recent[:, :-k - 1:-1])  # a list of k holds at most k of them
        in_width.append(np.ones(blocks[-1].shape, bool))
    model = None if served is None else served.model
    known = np.zeros(n, np.int64) if known is None else known
    if model is not None and vectors is not None:
        index_keys, _, rank = index_candidates(model, vectors, int(widths.max(initial=k)))
        blocks.append(np.where((known == 0)[:, None], -1, index_keys))  # no collaborative pool for strangers
        in_width.append(rank < widths[:, None])
    keys = np.concatenate(blocks, axis=1)
    eligible = np.concatenate(in_width, axis=1) & (keys >= 0)
    # a song proposed twice counts once, at its first eligible entry (which entry is eligible may
    # depend on the call's widest user; whether one is, does not)
    distinct = np.where(eligible, keys, -2 - np.arange(keys.shape[1]))
    allowed = eligible & ~repeats(distinct)
    if not config.heard_allowed:
        allowed &= ~mask_seen(keys, heard_slots, heard_keys)
    if len(state.hidden):
        allowed &= ~state.hidden.mask(keys)
    keys, allowed = _compact(keys, allowed)
    feats = _signals(state, model, vectors, keys, query)
    if config.relisten == "learn":
        # seen() lists the rows first, then songs trimmed from them: only those need a second lookup
        trimmed = heard_slots[len(rows):], heard_keys[len(rows):]
        feats[..., -4:] = _heard_signals(keys, rows, trimmed, recent)
    return Pool(keys, allowed, feats, sizes, known)


def _compact(keys: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's allowed candidates first, in their order, cut to the widest row (-1 pads): the
    signals then cost nothing for the duplicates and the entries beyond a source's width, which
    are most of the blocks as proposed (ranking ties go by key, not by position)."""
    width = max(int(allowed.sum(axis=1).max(initial=0)), 1)
    order = np.argsort(~allowed, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(allowed, order, axis=1)
    return np.where(kept, np.take_along_axis(keys, order, axis=1), -1), kept


def _signals(state: OnlineState, model: ServingModel | None, vectors: np.ndarray | None, keys: np.ndarray,
             query: CoocQuery) -> np.ndarray:
    ladder = state.popularity
    n_rungs = len(ladder.half_lives)
    feats = np.empty((*keys.shape, state.ranker.n_features), np.float32)  # half the memory of what is kept for lessons
    feats[..., :n_rungs] = ladder.log_relative(keys, _POP_FLOOR)
    feats[..., n_rungs] = feats[..., ladder.best]
    votes, normalised = query.at(keys)
    top_votes, top_normalised = query.row_max()
    feats[..., n_rungs + 1] = _relative_log(votes, top_votes, _VOTE_FLOOR)
    feats[..., n_rungs + 2] = _relative_log(normalised, top_normalised, _VOTE_FLOOR)
    feats[..., n_rungs + 3] = 0.0
    if model is not None and vectors is not None:
        rows = model.index.rows(keys)
        # a stacked product, one (M x f)(f) per user: a row's dot products do not depend on how many
        # users share the call (one BLAS call over all rows would), and it is ~5x faster than einsum
        dots = np.matmul(model.index.factors[np.maximum(rows, 0)], vectors.astype(np.float32)[..., None])[..., 0]
        feats[..., n_rungs + 3] = np.where(rows >= 0, dots, 0.0)
    return feats


def _find(codes: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each of ``want``'s codes in sorted ``codes``, and whether it is there."""
    if not len(codes):
        return np.zeros(want.shape, np.int64), np.zeros(want.shape, bool)
    at = np.minimum(np.searchsorted(codes, want), len(codes) - 1)
    return at, codes[at] == want


def _heard_signals(keys: np.ndarray, rows: UserRows, trimmed: tuple[np.ndarray, np.ndarray],
                   recent: np.ndarray) -> np.ndarray:
    """(U, M, 4): heard, heard_recency, heard_plays, heard_skips of each candidate for its user
    (``rows``: the users' history rows; ``trimmed``: (slot, key) of songs heard but trimmed from them)."""
    n, m = keys.shape
    want = slot_key_codes(np.repeat(np.arange(n), m), keys.ravel())
    out = np.zeros((n, m, 4), np.float32)
    codes, pos, neg = slot_key_codes(rows.slots, rows.keys), rows.pos, rows.neg
    if len(codes) > 1 and (codes[1:] < codes[:-1]).any():  # a user's rows hold each song once
        order = np.argsort(codes)
        codes, pos, neg = codes[order], pos[order], neg[order]
    at, found = _find(codes, want)
    was_heard = found.reshape(n, m)
    if len(trimmed[0]):
        was_heard = was_heard | mask_seen(keys, *trimmed)
    out[..., 0] = was_heard
    if len(codes):
        out[..., 2] = np.where(found, np.log1p(np.maximum(pos[at], 0.0)), 0.0).reshape(n, m)
        out[..., 3] = np.where(found, np.log1p(np.maximum(neg[at], 0.0)), 0.0).reshape(n, m)
    # plays ago of each song's latest play in the window (right-aligned, most recent last)
    length = recent.shape[1]
    u, c = np.nonzero(recent >= 0)
    codes = slot_key_codes(u, recent[u, c])
    order = np.lexsort((-c, codes))  # per song, its latest play first
    codes, ago = codes[order], length - c[order]
    first = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
    at, in_window = _find(codes[first], want)
    plays_ago = np.where(in_window, ago[first][at] if len(codes) else 0, length + 1).reshape(n, m)
    out[..., 1] = np.where(was_heard, -np.log(plays_ago), 0.0)
    return out
