"""Contract tests every ``Recommender`` runs (mix into a test class that defines ``make``)."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import RecList, Recommender
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


class RecommenderContract:
    """What every implementation must do; ``make()`` returns a fresh, unfitted recommender."""

    def make(self) -> Recommender:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def fitted(self) -> tuple[Recommender, EventBatch]:
        log = synthetic_log()
        model = self.make()
        model.fit(log.take(slice(0, 2500)))
        return model, log

    def test_shapes_and_padding(self, fitted: tuple[Recommender, EventBatch]) -> None:
        model, _ = fitted
        recs = model.recommend(np.array(["u1", "u2", "nobody"], dtype=object), k=7)
        assert isinstance(recs, RecList)
        assert recs.song_ids.shape == recs.scores.shape == recs.reasons.shape == (3, 7)
        for row in range(3):
            filled = recs.song_ids[row] != ""
            assert filled.sum() > 0, "every user, known or not, gets something"
            assert np.all(np.diff(recs.scores[row][filled]) <= 1e-6), "scores descend"
            assert len(set(recs.song_ids[row][filled])) == filled.sum(), "no duplicates"

    def test_batch_equals_single_user(self, fitted: tuple[Recommender, EventBatch]) -> None:
        model, log = fitted
        users = np.unique(log.user_ids)[:25]
        batch = model.recommend(users, k=10)
        for i, user in enumerate(users):
            alone = model.recommend(np.array([user], dtype=object), k=10)
            assert list(alone.song_ids[0]) == list(batch.song_ids[i]), user
            np.testing.assert_allclose(alone.scores[0], batch.scores[i], rtol=1e-4, atol=1e-5)

    def test_partial_fit_returns_touched_users(self, fitted: tuple[Recommender, EventBatch]) -> None:
        model, log = fitted
        tail = log.take(slice(2500, None))
        touched = model.partial_fit(tail)
        assert sorted(touched) == sorted(np.unique(tail.user_ids))

    def test_rejects_bad_requests(self, fitted: tuple[Recommender, EventBatch]) -> None:
        model, _ = fitted
        with pytest.raises(ValueError):
            model.recommend(np.array(["u1"], dtype=object), k=0)
        with pytest.raises(ValueError):
            model.recommend(np.array([["u1"]], dtype=object), k=5)

    def test_finds_the_users_cluster(self, fitted: tuple[Recommender, EventBatch]) -> None:
        model, _ = fitted
        users = np.array([f"u{i}" for i in range(20)], dtype=object)
        recs = model.recommend(users, k=10)
        hits = [int(s[1:]) % 2 == i % 2 for i in range(20) for s in recs.song_ids[i] if s]
        assert np.mean(hits) > self.cluster_precision

    cluster_precision = 0.8
