"""Ranking and sampling on (users x candidates) arrays: seen-filtering, repeats, top-k selection,
diversity re-ranking, and drawing items a user has not interacted with.

Every model filters, ranks and samples through these functions, so comparisons between models
measure what they learnt, not how each one happens to pick its lists.
"""

from __future__ import annotations

import numpy as np

from index_manager.song_index import SongIndex

_LOW40 = (1 << 40) - 1
# Rejection rounds before giving up; each round redraws only the rejected cells, so even a user who
# has seen 90% of the catalog finishes in a few dozen rounds.
_MAX_ROUNDS = 1000


def slot_key_codes(slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
    # (user slot, song key) packed into one int64; two songs of one user would have to agree on
    # 40 key bits to be confused, which merely filters one extra candidate
    return (np.asarray(slots, np.int64) << 40) | (np.asarray(keys, np.int64) & _LOW40)


def heard(slots: np.ndarray, keys: np.ndarray, seen_slots: np.ndarray, seen_keys: np.ndarray) -> np.ndarray:
    """Boolean per pair: True where user ``slots[i]`` has song ``keys[i]`` in their seen set."""
    if len(seen_slots) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    seen = slot_key_codes(seen_slots, seen_keys)
    if len(seen) > 1 and (seen[1:] < seen[:-1]).any():
        seen = np.sort(seen)
    # one binary search per pair against the seen codes (usually in order already, by user then
    # song), where isin would sort both sides together on every call
    codes = slot_key_codes(slots, keys)
    pos = np.minimum(np.searchsorted(seen, codes), len(seen) - 1)
    return seen[pos] == codes


def mask_seen(cand_keys: np.ndarray, seen_slots: np.ndarray, seen_keys: np.ndarray) -> np.ndarray:
    """Boolean (U, M): True where candidate ``cand_keys[u, j]`` is in user u's seen set."""
    n_users, m = cand_keys.shape
    return heard(np.repeat(np.arange(n_users), m), cand_keys.ravel(), seen_slots, seen_keys).reshape(cand_keys.shape)


def repeats(values: np.ndarray) -> np.ndarray:
    """Boolean (U, M): True where ``values[u, j]`` already occurred earlier in row u."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    repeat_sorted = np.zeros(values.shape, bool)
    repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.zeros(values.shape, bool)
    np.put_along_axis(out, order, repeat_sorted, axis=1)
    return out


def take_top(keys: np.ndarray, scores: np.ndarray, allowed: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """First ``k`` allowed candidates per row in descending score; -1 / -inf pad."""
    n, m = keys.shape
    s = np.where(allowed & (keys >= 0), scores, -np.inf)
    width = min(k, m)
    part = np.argpartition(-s, width - 1, axis=1)[:, :width] if m > width else np.broadcast_to(np.arange(m), (n, m))
    ps = np.take_along_axis(s, part, axis=1)
    # stable tie-break on the key keeps batch and single-user answers identical
    pk = np.take_along_axis(keys, part, axis=1)
    order = np.lexsort((pk, -ps), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    out_s = np.take_along_axis(s, top, axis=1)
    out_k = np.where(np.isfinite(out_s), np.take_along_axis(keys, top, axis=1), -1)
    if width < k:
        out_k = np.pad(out_k, ((0, 0), (0, k - width)), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, k - width)), constant_values=-np.inf)
    return out_k, out_s.astype(np.float32)


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


# -- sampling items a user has not interacted with ---------------------------------------------
# NCF training draws its uniform negatives here, and the leave-last-out evaluation and the retrain
# gate their 99 sampled negatives, so all treat "not interacted with" the same way: a (user, item)
# pair is one int64 key ``user * n_items + item`` and membership is a binary search in sorted keys.

def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 key per (user row, item row) pair."""
    return np.asarray(users, dtype=np.int64) * np.int64(n_items) + np.asarray(items, dtype=np.int64)


def seen_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted, distinct keys of the pairs to exclude (the input of :func:`sample_unseen`)."""
    return np.unique(pair_keys(users, items, n_items))


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def sample_unseen(rng: np.random.Generator, user_rows: np.ndarray, n_per_user: int, n_items: int,
                  seen: np.ndarray, distinct: bool = True) -> np.ndarray:
    """Items drawn uniformly from those each user has not interacted with: int64 (len(users), n).

    ``seen`` holds the sorted keys of excluded pairs (:func:`seen_keys`). With ``distinct`` a row
    holds no item twice (sampling without replacement). The result depends only on ``rng``'s state
    and the inputs, so a fixed seed gives the same items on every run and for every model.
    """
    users = np.asarray(user_rows)
    if users.ndim != 1 or (len(users) and users.dtype.kind not in "iu"):
        raise ValueError(f"user_rows must be a 1-d integer array, got {users.dtype} {users.shape}")
    if n_per_user < 0 or n_items <= 0:
        raise ValueError("n_per_user must be >= 0 and n_items > 0")
    users = users.astype(np.int64)
    out = np.empty((len(users), n_per_user), dtype=np.int64)
    if out.size == 0:
        return out
    # capacity check first: otherwise the rejection loop below could never finish
    seen_users, seen_count = np.unique(np.asarray(seen) // n_items, return_counts=True)
    counts = np.zeros(int(max(users.max(), seen_users.max(initial=0))) + 1, dtype=np.int64)
    counts[seen_users] = seen_count
    free = n_items - counts[users]
    need = n_per_user if distinct else 1
    if (free < need).any():
        short = int(users[np.argmax(free < need)])
        raise ValueError(f"user row {short} has only {int(free.min())} unseen items, {need} needed")
    out[:] = rng.integers(0, n_items, size=out.shape)
    rows = np.broadcast_to(users[:, None], out.shape)
    for _ in range(_MAX_ROUNDS):
        rejected = _contains(seen, pair_keys(rows, out, n_items))
        if distinct:
            rejected |= repeats(out)
        n_bad = int(rejected.sum())
        if n_bad == 0:
            return out
        out[rejected] = rng.integers(0, n_items, size=n_bad)
    raise RuntimeError("negative sampling did not converge")  # pragma: no cover - needs ~all items seen
