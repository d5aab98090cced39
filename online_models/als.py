"""Full ALS training (implicit) into a model artifact with its FAISS index."""

from __future__ import annotations

from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from index_manager.artifacts import ModelArtifact
from index_manager.song_index import SongIndex
from online_models.config import OnlineConfig
from online_models.interactions import Interactions


def train_als(interactions: Interactions, config: OnlineConfig, *, show_progress: bool = False,
              trained_on: dict[str, Any] | None = None, num_threads: int = 0) -> ModelArtifact:
    """Factorise the engagement matrix with implicit's ALS (confidence c = 1 + alpha·|engagement|,
    skips as zero preference with confidence) and index the item factors for inner-product search."""
    from implicit.cpu.als import AlternatingLeastSquares  # heavy import kept off module import

    if len(interactions) == 0:
        raise ValueError("cannot train on an empty log")
    mat, users, songs = interactions.matrix(config.alpha)
    # implicit parallelises itself; nested BLAS threads on 2 cores only oversubscribe
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=config.factors, regularization=config.regularization,
                                        alpha=1.0, iterations=config.iterations, random_state=config.seed,
                                        num_threads=num_threads)
        model.fit(mat, show_progress=show_progress)
    plays = np.asarray((mat > 0).sum(axis=0)).ravel().astype(np.float64)
    return als_artifact(users, songs, model.user_factors, model.item_factors, plays, config,
                        dict(trained_on or {}, n_interactions=len(interactions)))


def als_artifact(users: np.ndarray, songs: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray,
                 plays: np.ndarray, config: OnlineConfig, trained_on: dict[str, Any],
                 params: dict[str, Any] | None = None) -> ModelArtifact:
    """The ``kind="als"`` version of trained factors, whichever engine trained them: the factors, each
    song's count of positive users (``plays``) and the FAISS index over the item factors."""
    item_factors = np.asarray(item_factors, dtype=np.float32)
    index = SongIndex(songs, item_factors)
    return ModelArtifact(
        kind="als", song_names=songs, item_factors=item_factors, user_names=users,
        user_factors=np.asarray(user_factors, dtype=np.float32), popularity=np.asarray(plays, np.float64),
        params={"factors": config.factors, "regularization": config.regularization, "alpha": config.alpha,
                "iterations": config.iterations, "half_life_days": config.half_life_days,
                "index_kind": index.kind, **(params or {})},
        trained_on=dict(trained_on, n_users=len(users), n_songs=len(songs)),
        index_bytes=index.to_bytes(),
    )
