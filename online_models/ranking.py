"""Vectorised list operations on (users x candidates) arrays: seen-filtering and top-k selection."""

from __future__ import annotations

import numpy as np

_LOW40 = (1 << 40) - 1


def _pair_codes(slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
    # (user slot, song key) packed into one int64; two songs of one user would have to agree on
    # 40 key bits to be confused, which merely filters one extra candidate
    return (np.asarray(slots, np.int64) << 40) | (np.asarray(keys, np.int64) & _LOW40)


def mask_seen(cand_keys: np.ndarray, seen_slots: np.ndarray, seen_keys: np.ndarray) -> np.ndarray:
    """Boolean (U, M): True where candidate ``cand_keys[u, j]`` is in user u's seen set."""
    n_users, m = cand_keys.shape
    if len(seen_slots) == 0 or cand_keys.size == 0:
        return np.zeros(cand_keys.shape, dtype=bool)
    codes = _pair_codes(np.repeat(np.arange(n_users), m), cand_keys.ravel())
    return np.isin(codes, _pair_codes(seen_slots, seen_keys)).reshape(cand_keys.shape)


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


def merge_fill(keys: np.ndarray, scores: np.ndarray, fill_keys: np.ndarray, fill_scores: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Append ``fill`` candidates after each row's own (deduplicated), keep the first ``k``."""
    cat_k = np.concatenate([keys, fill_keys], axis=1)
    # rank by source first (own list before fill), then by position: keeps each list's order
    m = cat_k.shape[1]
    valid = cat_k >= 0
    dup = np.zeros_like(valid)
    srt = np.argsort(np.where(valid, cat_k, np.iinfo(np.int64).max), axis=1, kind="stable")
    sk = np.take_along_axis(cat_k, srt, axis=1)
    same = np.zeros_like(valid)
    same[:, 1:] = (sk[:, 1:] == sk[:, :-1]) & (sk[:, 1:] >= 0)
    np.put_along_axis(dup, srt, same, axis=1)
    ok = valid & ~dup
    pos = np.where(ok, np.arange(m), m + np.arange(m))
    order = np.argsort(pos, axis=1, kind="stable")[:, :k]
    out_k = np.take_along_axis(np.where(ok, cat_k, -1), order, axis=1)
    cat_s = np.concatenate([scores, fill_scores], axis=1)
    out_s = np.where(out_k >= 0, np.take_along_axis(cat_s, order, axis=1), -np.inf)
    return out_k, out_s.astype(np.float32)
