"""Vectorised sampling of items a user has not interacted with.

NCF training draws its uniform negatives here and the leave-last-out evaluation its 99 sampled
negatives, so both treat "not interacted with" the same way: a (user, item) pair is encoded as one
int64 key ``user * n_items + item`` and membership is a binary search in a sorted key array.
"""

from __future__ import annotations

import numpy as np

# Rejection rounds before giving up; each round redraws only the rejected cells, so even a user who
# has seen 90% of the catalog finishes in a few dozen rounds.
_MAX_ROUNDS = 1000


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


def _later_duplicates(rows: np.ndarray) -> np.ndarray:
    """Mask of cells repeating a value found earlier in the same row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    dup_sorted = np.zeros(rows.shape, dtype=bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    dup = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


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
            rejected |= _later_duplicates(out)
        n_bad = int(rejected.sum())
        if n_bad == 0:
            return out
        out[rejected] = rng.integers(0, n_items, size=n_bad)
    raise RuntimeError("negative sampling did not converge")  # pragma: no cover - needs ~all items seen
