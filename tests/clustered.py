"""A synthetic log with taste clusters, big enough for leave-last-out with 99 sampled negatives."""

from __future__ import annotations

import numpy as np

from online_models.batch import EventBatch


def clustered_log(n_users: int = 120, n_songs: int = 600, n_clusters: int = 6, plays_per_user: int = 25,
                  noise: float = 0.1, skip_rate: float = 0.05, seed: int = 0) -> EventBatch:
    """Users of cluster c play songs of cluster c (songs s with s % n_clusters == c), Zipf-popular within
    the cluster, plus a ``noise`` share of random songs; ``skip_rate`` of events are skips of songs
    outside the cluster. A model that finds the clusters ranks a held-out song among ~1/n_clusters of
    the sampled negatives; global popularity cannot tell the clusters apart."""
    rng = np.random.default_rng(seed)
    per_cluster = n_songs // n_clusters
    zipf = 1.0 / np.arange(1, per_cluster + 1) ** 0.8
    zipf /= zipf.sum()
    n = n_users * plays_per_user
    users = np.repeat(np.arange(n_users), plays_per_user)
    cluster = users % n_clusters
    songs = rng.choice(per_cluster, size=n, p=zipf) * n_clusters + cluster
    random_song = rng.random(n) < noise
    songs = np.where(random_song, rng.integers(0, per_cluster * n_clusters, n), songs)
    skip = rng.random(n) < skip_rate
    outside = (rng.integers(1, n_clusters, n) + cluster) % n_clusters
    songs = np.where(skip, rng.integers(0, per_cluster, n) * n_clusters + outside, songs)
    ts = 1.6e9 + np.arange(n) * 60.0 + rng.uniform(0, 30, n)
    return EventBatch.from_columns(
        np.array([f"u{u}" for u in users], dtype=object), np.array([f"s{s}" for s in songs], dtype=object),
        np.where(skip, "skip", "play").astype(object), ts, None,
        np.array([f"e{i}" for i in range(n)], dtype=object))
