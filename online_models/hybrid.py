"""The hybrid full model: EASE song-to-song weights on the user's recent plays, blended with ALS.

``score(u, j) = z_u(x_u · B[:, j]) + als_weight · z_u(p_u · q_j)``, where ``z_u`` standardises a
component over the whole catalogue for that user (mean 0, variance 1), so neither component's scale
decides the mix and ``als_weight`` means the same on every log. EASE (``online_models.ease``) finds the
exact next songs (full-catalogue recall); ALS adds the user's long-run taste, which ranks a held-out
song above random ones (sampled HR). Each alone loses one of the two; together they win both.

Serving: a version holds the ALS factors (as every version does) plus the pruned EASE table
(``to_artifact``). For a user, the worker has what ``score_history`` needs: the ALS user vector from
the fold-in and the recent plays in order (``online_models.sequences.RecentPlays``), turned into a
history row by ``online_models.ease.play_recency``. Scoring is one sparse row times a sparse table
plus one matrix-vector product over the catalogue, the cost of the exact flat search used today.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from index_manager.artifacts import ModelArtifact
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.ease import ease_weights, play_recency
from online_models.interactions import Interactions


@dataclass(frozen=True)
class HybridConfig:
    """``l2``: EASE's L2 penalty (the right value grows with plays per song); ``half_life_events``: recency
    half-life of the user's plays, counted in plays (0 = no decay); ``als_weight``: weight of the
    standardised ALS score beside the standardised EASE one; ``neighbours``: EASE weights kept per song;
    ``als``: the ALS part's parameters. ``musicrec evaluate --protocol loo`` chooses the first three
    (and ``als``) per log on its early half (``offline.loo_tune``); the defaults are values that did well
    on the early halves of both visible logs."""

    l2: float = 1000.0
    half_life_events: float = 10.0
    als_weight: float = 0.5
    neighbours: int = 1000
    als: OnlineConfig = field(default_factory=OnlineConfig)

    def __post_init__(self) -> None:
        if not self.l2 > 0:
            raise ValueError(f"l2 must be positive, got {self.l2!r}")
        if self.half_life_events < 0 or self.als_weight < 0:
            raise ValueError("half_life_events and als_weight must be >= 0")
        if self.neighbours <= 0:
            raise ValueError(f"neighbours must be positive, got {self.neighbours!r}")


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row to mean 0 and variance 1 (a constant row becomes 0s)."""
    s = np.asarray(scores, np.float64)
    centred = s - s.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


class HybridModel:
    """A fitted hybrid: users and songs in row order, ALS factors, EASE table, training histories."""

    def __init__(self, config: HybridConfig, users: np.ndarray, songs: np.ndarray, user_factors: np.ndarray,
                 item_factors: np.ndarray, ease: sp.csr_matrix, plays: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> None:
        self.config = config
        self.users, self.songs = np.asarray(users, object), np.asarray(songs, object)
        self.user_factors = np.asarray(user_factors, np.float32)
        self.item_factors = np.asarray(item_factors, np.float32)
        self.ease = ease
        self._plays = plays  # (user row, song column, ts) of every training play
        self.history = play_recency(*plays, (len(self.users), len(self.songs)), config.half_life_events)

    @classmethod
    def fit(cls, train: EventBatch, config: HybridConfig | None = None, *, als: ModelArtifact | None = None,
            ease: sp.csr_matrix | None = None) -> HybridModel:
        """Fit both parts on ``train`` (users and songs: every one in it, sorted). A given ``als``
        artifact or ``ease`` table (fitted on the same ``train``) is reused instead of refitted."""
        from online_models.als import train_als  # implicit's import is heavy

        if not isinstance(train, EventBatch) or len(train) == 0:
            raise ValueError("fit needs a non-empty EventBatch")
        config = config or HybridConfig()
        users, u = np.unique(train.user_ids, return_inverse=True)
        songs, s = np.unique(train.song_ids, return_inverse=True)
        art = als or train_als(Interactions.from_events(train, config.als), config.als)
        # align ALS rows (which may miss users or songs whose only events were dropped) to ours
        uf = np.zeros((len(users), art.factors), np.float32)
        itf = np.zeros((len(songs), art.factors), np.float32)
        uf[np.searchsorted(users, art.user_names)] = art.user_factors
        itf[np.searchsorted(songs, art.song_names)] = art.item_factors
        play = train.kinds == PLAY
        if ease is None:
            binary = sp.csr_matrix((np.ones(int(play.sum()), np.float32), (u[play], s[play])),
                                   shape=(len(users), len(songs)))
            binary.data[:] = 1.0  # duplicates summed by the constructor: a song played twice is one song
            ease = ease_weights(binary, config.l2, config.neighbours)
        if ease.shape != (len(songs), len(songs)):
            raise ValueError(f"the EASE table is {ease.shape}, the training songs {len(songs)}")
        return cls(config, users, songs, uf, itf, ease, (u[play], s[play], train.ts[play]))

    def with_blend(self, half_life_events: float, als_weight: float) -> HybridModel:
        """The same fitted parts with another recency half-life and ALS weight (no refit)."""
        config = replace(self.config, half_life_events=half_life_events, als_weight=als_weight)
        return HybridModel(config, self.users, self.songs, self.user_factors, self.item_factors, self.ease,
                           self._plays)

    def score_history(self, history: sp.spmatrix, user_vectors: np.ndarray) -> np.ndarray:
        """Dense (U, songs) scores from history rows (U x songs, ``play_recency`` weights) and ALS
        user vectors (U, factors): the serving entry point."""
        hist = sp.csr_matrix(history, dtype=np.float32)
        vecs = np.asarray(user_vectors, np.float32)
        if hist.shape[1] != len(self.songs) or vecs.shape != (hist.shape[0], self.item_factors.shape[1]):
            raise ValueError(f"history must be (U, {len(self.songs)}) and user_vectors "
                             f"(U, {self.item_factors.shape[1]}), got {hist.shape} and {vecs.shape}")
        out = standardise((hist @ self.ease).toarray())
        if self.config.als_weight > 0:
            out += self.config.als_weight * standardise(vecs @ self.item_factors.T)
        return out

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Dense (U, songs) scores of training users by row."""
        rows = np.asarray(rows, np.int64)
        return self.score_history(self.history[rows], self.user_factors[rows])

    def to_artifact(self, popularity: np.ndarray | None = None) -> ModelArtifact:
        """A servable version: the ALS factors plus the EASE table as CSR arrays (no pickle)."""
        pop = np.asarray(self.history.getnnz(axis=0), np.float64) if popularity is None else popularity
        ease = self.ease.tocsr()
        params: dict[str, Any] = {k: v for k, v in asdict(self.config).items() if k != "als"}
        params["als"] = asdict(self.config.als)
        return ModelArtifact(kind="hybrid", song_names=self.songs, item_factors=self.item_factors,
                             user_names=self.users, user_factors=self.user_factors, popularity=pop, params=params,
                             arrays={"ease_indptr": ease.indptr.astype(np.int64),
                                     "ease_indices": ease.indices.astype(np.int64),
                                     "ease_data": ease.data.astype(np.float32)})

    @staticmethod
    def table_from_artifact(art: ModelArtifact) -> sp.csr_matrix:
        """The EASE table stored by ``to_artifact``."""
        n = len(art.song_names)
        try:
            return sp.csr_matrix((art.arrays["ease_data"], art.arrays["ease_indices"], art.arrays["ease_indptr"]),
                                 shape=(n, n))
        except KeyError as exc:
            raise ValueError(f"artifact of kind {art.kind!r} has no EASE table") from exc
