"""New songs before anyone has played them: content features projected into the collaborative space.

At retrain time a ridge regression is fitted from standardised content features (audio features,
plus a one-hot of the genre) to the item factors of songs that have both. A catalog event for a
new song is projected with it and added to the live index at once; the next retrain replaces the
projection by the song's own collaborative vector once it has plays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from index_manager.artifacts import ModelArtifact

GENRE_PREFIX = "genre="


def feature_names(features: Sequence[Mapping[str, float]], genres: Sequence[str | None]) -> tuple[str, ...]:
    """The numeric features every song has, then one column per genre seen."""
    if not features:
        return ()
    common = set(features[0])
    for f in features[1:]:
        common &= set(f)
    numeric = sorted(common)
    genre_cols = sorted({GENRE_PREFIX + g for g in genres if g})
    return (*numeric, *genre_cols)


def feature_matrix(names: Sequence[str], features: Sequence[Mapping[str, float]],
                   genres: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix n x d, ok n): a row is not ok when a numeric feature is missing or not finite."""
    numeric = [n for n in names if not n.startswith(GENRE_PREFIX)]
    genre_col = {n[len(GENRE_PREFIX):]: j for j, n in enumerate(names) if n.startswith(GENRE_PREFIX)}
    out = np.zeros((len(features), len(names)), np.float64)
    ok = np.ones(len(features), bool)
    for i, (feats, genre) in enumerate(zip(features, genres, strict=True)):
        try:
            out[i, :len(numeric)] = [feats[n] for n in numeric]
        except KeyError:
            ok[i] = False
            continue
        if genre in genre_col:
            out[i, genre_col[genre]] = 1.0
    ok &= np.isfinite(out).all(axis=1)
    return out, ok


@dataclass(frozen=True)
class ContentProjection:
    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (d + 1) x f, last row is the bias

    @classmethod
    def fit(cls, names: Sequence[str], features: np.ndarray, factors: np.ndarray,
            regularization: float = 1.0) -> ContentProjection:
        """Ridge regression on standardised features (the bias is not shrunk)."""
        x = np.asarray(features, np.float64)
        y = np.asarray(factors, np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or x.shape[1] != len(names):
            raise ValueError(f"features {x.shape} / factors {y.shape} / {len(names)} names do not line up")
        if len(x) <= x.shape[1]:
            raise ValueError(f"need more songs than features to fit a projection ({len(x)} <= {x.shape[1]})")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("features and factors must be finite")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        penalty = regularization * np.eye(z.shape[1])
        penalty[-1, -1] = 0.0
        weights = np.linalg.solve(z.T @ z + penalty, z.T @ y)
        return cls(tuple(names), mean, std, weights)

    def project(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ValueError(f"expected features of shape (n, {len(self.names)}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features must be finite")
        z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
        return (z @ self.weights).astype(np.float32)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], list[str]]:
        return {"content_mean": self.mean, "content_std": self.std, "content_weights": self.weights}, list(self.names)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> ContentProjection | None:
        if "content_weights" not in arrays:
            return None
        proj = cls(tuple(names), np.asarray(arrays["content_mean"]), np.asarray(arrays["content_std"]),
                   np.asarray(arrays["content_weights"]))
        if proj.weights.shape[0] != len(names) + 1 or proj.mean.shape != (len(names),):
            raise ValueError("stored content projection has inconsistent shapes")
        return proj


def attach_projection(artifact: ModelArtifact, song_ids: Sequence[str], features: Sequence[Mapping[str, float]],
                      genres: Sequence[str | None], norm_quantile: float, min_songs: int = 50) -> bool:
    """Fit the projection on catalog songs the artifact has factors for and store it in the artifact
    (arrays, feature names, and the norm new songs get). False when the catalog cannot support one."""
    names = feature_names(features, genres)
    if not names:
        return False
    x, ok = feature_matrix(names, features, genres)
    row_of = {s: i for i, s in enumerate(artifact.song_names.tolist())}
    rows = np.array([row_of.get(s, -1) for s in song_ids], dtype=np.int64)
    use = ok & (rows >= 0)
    if use.sum() < max(min_songs, 2 * len(names)):
        return False
    projection = ContentProjection.fit(names, x[use], artifact.item_factors[rows[use]])
    arrays, listed = projection.to_arrays()
    artifact.arrays.update(arrays)
    artifact.lists["content_features"] = listed
    norms = np.linalg.norm(artifact.item_factors, axis=1)
    artifact.params["new_song_norm"] = float(np.quantile(norms, norm_quantile))
    artifact.params["content_songs"] = int(use.sum())
    return True


def new_song_vectors(projection: ContentProjection, features: np.ndarray, norm: float) -> np.ndarray:
    """Projected direction, scaled to the exposure norm chosen at retrain."""
    v = projection.project(features)
    lengths = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(lengths > 0, lengths, 1.0) * norm).astype(np.float32)
