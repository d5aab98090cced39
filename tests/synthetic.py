"""A synthetic listening log with two taste clusters, small enough for any test."""

from __future__ import annotations

import numpy as np

from online_models.batch import EventBatch


def synthetic_log(n_users: int = 60, n_songs: int = 120, n_events: int = 3000, seed: int = 0) -> EventBatch:
    """Two taste clusters (even/odd songs) so a working model has something to find."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    cluster = users % 2
    songs = 2 * rng.integers(0, n_songs // 2, n_events) + cluster
    skips = rng.random(n_events) < 0.1
    return EventBatch.from_columns(
        np.array([f"u{u}" for u in users], dtype=object), np.array([f"s{s}" for s in songs], dtype=object),
        np.where(skips, "skip", "play").astype(object), np.sort(rng.uniform(1.6e9, 1.6e9 + 86400 * 60, n_events)),
        None, np.array([f"e{i}" for i in range(n_events)], dtype=object))
