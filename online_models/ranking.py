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


def first_occurrence_mask(keys: np.ndarray) -> np.ndarray:
    """Boolean (U, M): True where ``keys[u, j]`` already occurred earlier in row u (a duplicate)."""
    order = np.argsort(keys, axis=1, kind="stable")
    srt = np.take_along_axis(keys, order, axis=1)
    dup_sorted = np.zeros(keys.shape, bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    out = np.zeros(keys.shape, bool)
    np.put_along_axis(out, order, dup_sorted, axis=1)
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
