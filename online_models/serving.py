"""The swappable part of a running recommender: one model version's song space and solver inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index_manager.artifacts import ArtifactError, ModelArtifact, load_artifact
from index_manager.neighbours import similar_songs
from index_manager.song_index import SongIndex, from_parts
from online_models.base import RecList
from online_models.content import ContentProjection
from online_models.ncf import NCFScorer
from online_models.sasrec_serving import SequenceQueries


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
    sequence: SequenceQueries | None = None  # SASRec: queries are states of recent plays, not fold-in
    metrics: dict[str, Any] = field(default_factory=dict)  # the manifest's, e.g. the gate's figures
    created_at: float | None = None

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, version: str | None = None) -> ServingModel:
        """Serve ``artifact``; ``version`` names one not saved yet (a retrain's candidate)."""
        version = version or artifact.version
        if version is None:
            raise ArtifactError("artifact has no version; save or load it first")
        try:
            index = from_parts(artifact.song_names, artifact.item_factors.copy(), artifact.index_bytes)
            sequence = SequenceQueries.from_artifact(artifact) if artifact.kind == "sasrec" else None
        except ValueError as exc:
            raise ArtifactError(f"version {version}: {exc}") from exc
        y = index.factors.astype(np.float64)
        order = np.argsort(artifact.user_names)
        params = artifact.params
        return cls(
            version=version, kind=artifact.kind, index=index, gram=y.T @ y,
            regularization=float(params.get("regularization", 0.05)), alpha=float(params.get("alpha", 10.0)),
            user_names=artifact.user_names[order], user_factors=artifact.user_factors[order],
            trained_until=float(artifact.trained_on.get("ts_max", 0.0) or 0.0),
            projection=ContentProjection.from_arrays(artifact.arrays, artifact.lists.get("content_features", [])),
            new_song_norm=float(params.get("new_song_norm", 0.0)),
            ranker=NCFScorer.from_artifact(artifact) if artifact.kind == "ncf" else None, sequence=sequence,
            metrics=dict(artifact.metrics), created_at=artifact.created_at,
        )

    @classmethod
    def load(cls, root: str | Path, version: str) -> ServingModel:
        """Load and check a version for serving (raises ArtifactError if it is unusable); slow, so
        callers run it aside, off the hot path."""
        model = cls.from_artifact(load_artifact(root, version))
        probe, _ = model.index.search(model.index.factors[:1], 1)
        if probe[0, 0] < 0:
            raise ArtifactError(f"version {version}: index returns nothing for its own songs")
        return model

    def trained_user_vectors(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, found) for users as learnt at training time."""
        if len(self.user_names) == 0:
            return np.zeros((len(users), self.index.dim), np.float32), np.zeros(len(users), bool)
        pos = np.minimum(np.searchsorted(self.user_names, users), len(self.user_names) - 1)
        found = self.user_names[pos] == users
        return np.where(found[:, None], self.user_factors[pos], 0.0).astype(np.float32), found

    def similar(self, song_ids: np.ndarray, k: int = 10, depth: int = 100) -> RecList:
        """The songs closest to each song by cosine (see ``index_manager.neighbours``)."""
        keys, scores = similar_songs(self.index, song_ids, k, depth)
        return RecList(self.index.names_of(keys), scores, np.full(keys.shape, None, dtype=object), self.version)
