"""Stable 63-bit integer keys for song ids.

FAISS ids, the online per-user state and popularity counters all use the same key for a song, in
every worker and every model version, so nothing has to be re-mapped when a version is swapped.
Python's ``hash`` is salted per process, hence blake2b.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

_MASK = (1 << 63) - 1


@functools.lru_cache(maxsize=1 << 20)
def song_key(song_id: str) -> int:
    # memoised: the same songs recur in every batch, and hashing is most of the per-event key cost
    return int.from_bytes(hashlib.blake2b(song_id.encode("utf-8"), digest_size=8).digest(), "little") & _MASK


def song_keys(song_ids: object) -> np.ndarray:
    """Keys of many song ids as an int64 array (non-negative, never -1, FAISS's "missing")."""
    ids = np.asarray(song_ids, dtype=object)
    if ids.ndim != 1:
        raise ValueError(f"song_ids must be one-dimensional, got shape {ids.shape}")
    return np.fromiter((song_key(s) for s in ids), dtype=np.int64, count=len(ids))
