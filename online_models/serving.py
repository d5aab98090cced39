"""The swappable part of a running recommender: one model version's song space and solver inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.errors import ArtifactError
from index_manager.song_index import SongIndex
from online_models.content import ContentProjection
from online_models.ncf import NCFScorer


@dataclass
class ServingModel:
    """Item factors + FAISS index + what fold-in needs, built aside and swapped whole."""

    version: str
    kind: str
    index: SongIndex
    gram: np.ndarray
    regularization: float
    alpha: float
    user_names: np.ndarray  # sorted; users seen in training, for the "static" baseline
    user_factors: np.ndarray
    trained_until: float
    projection: ContentProjection | None = None
    new_song_norm: float = 0.0
    ranker: NCFScorer | None = None  # NeuMF re-ranks index candidates for users it was trained on

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> ServingModel:
        if artifact.version is None:
            raise ArtifactError("artifact has no version; save or load it first")
        try:
            index = SongIndex.from_parts(artifact.song_names, artifact.item_factors.copy(),
                                         artifact.index_bytes)
        except ValueError as exc:
            raise ArtifactError(f"version {artifact.version}: {exc}") from exc
        y = index.factors.astype(np.float64)
        order = np.argsort(artifact.user_names)
        params = artifact.params
        return cls(
            version=artifact.version, kind=artifact.kind, index=index, gram=y.T @ y,
            regularization=float(params.get("regularization", 0.05)), alpha=float(params.get("alpha", 10.0)),
            user_names=artifact.user_names[order], user_factors=artifact.user_factors[order],
            trained_until=float(artifact.trained_on.get("ts_max", 0.0) or 0.0),
            projection=ContentProjection.from_arrays(artifact.arrays, artifact.lists.get("content_features", [])),
            new_song_norm=float(params.get("new_song_norm", 0.0)),
            ranker=NCFScorer.from_artifact(artifact) if artifact.kind == "ncf" else None,
        )

    def trained_user_vectors(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, found) for users as learnt at training time."""
        if len(self.user_names) == 0:
            return np.zeros((len(users), self.index.dim), np.float32), np.zeros(len(users), bool)
        pos = np.minimum(np.searchsorted(self.user_names, users), len(self.user_names) - 1)
        found = self.user_names[pos] == users
        return np.where(found[:, None], self.user_factors[pos], 0.0).astype(np.float32), found
