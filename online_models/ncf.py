"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a GMF and an MLP tower fused by one
output layer, trained with binary cross-entropy on positives and sampled negatives.

Two interchangeable backends, PyTorch (``ncf_torch``) and MLX (``ncf_mlx``), share everything except
the tensor maths: the initial weights (``ncf_weights``), the training samples, the LR schedule and
early stopping (``ncf_train``) are computed in numpy from the seed, so both see identical inputs.
Weights are exchanged as one safetensors file with one layout; a model trained by either backend
loads in the other. This module holds what serving needs: the backend interface and the scorer.

The artifact's retrieval space is the GMF branch: ``item_factors`` are the GMF item embeddings and
``user_factors`` the GMF user embeddings scaled by the GMF half of the output weights, so a FAISS
inner product is exactly the GMF branch's contribution to the NeuMF logit. Full NeuMF scores come
from :class:`NCFScorer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from index_manager.artifacts import ModelArtifact
from online_models.ncf_config import BACKENDS, NCFConfig
from online_models.ncf_weights import WEIGHTS_FILE, check_weights, weights_from_bytes

# (users x songs) pairs per scoring chunk: bounds the MLP's hidden activations to ~64 MB
CHUNK_PAIRS = 1 << 19


class NeuMFBackend(Protocol):
    """What ``ncf_torch`` and ``ncf_mlx`` provide: the tensor maths, nothing else."""

    def weights(self) -> dict[str, np.ndarray]:
        """Current weights as float32 numpy arrays in the shared layout."""

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits of parallel (user row, item row) arrays, float32 (n,)."""

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """Logits of the given user rows against every item, float32 (len(users), n_items)."""

    def train_epoch(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, lr: float,
                    on_batch: Callable[[int], object]) -> float:
        """One pass over the samples in order, ``batch_size`` per step; returns the mean loss."""


def load_backend(backend: str, weights: dict[str, np.ndarray], config: NCFConfig | None = None) -> NeuMFBackend:
    """A backend holding ``weights``; ``config`` (optimiser settings) is needed only to train."""
    check_weights(weights)
    if backend == "torch":
        from online_models.ncf_torch import TorchNeuMF

        return TorchNeuMF(weights, config)
    if backend == "mlx":
        from online_models.ncf_mlx import MLXNeuMF

        return MLXNeuMF(weights, config)
    raise ValueError(f"unknown NCF backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _check_rows(rows: object, n: int, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be a {ndim}-d integer array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{what} out of range 0..{n - 1}")
    return arr


class NCFScorer:
    """Full NeuMF scores (logits) for a trained model, on either backend, batched.

    ``score`` takes user rows (U,) and candidate song rows (U, C); ``score_all`` scores every song.
    Rows come from :meth:`user_rows` / :meth:`song_rows` (-1 marks an unknown name, which the
    scoring methods refuse: what an unknown user or song should get is the caller's policy).
    """

    def __init__(self, user_names: np.ndarray, song_names: np.ndarray, weights: dict[str, np.ndarray],
                 backend: str = "torch") -> None:
        n_users, n_items, _, _ = check_weights(weights)
        self.user_names = np.asarray(user_names, dtype=object)
        self.song_names = np.asarray(song_names, dtype=object)
        if self.user_names.shape != (n_users,) or self.song_names.shape != (n_items,):
            raise ValueError(f"weights are for {n_users} users x {n_items} songs, got "
                             f"{self.user_names.shape} user and {self.song_names.shape} song names")
        self.backend = backend
        self._net = load_backend(backend, weights)
        self._user_row = {u: i for i, u in enumerate(self.user_names.tolist())}
        self._song_row = {s: i for i, s in enumerate(self.song_names.tolist())}

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, backend: str = "torch") -> NCFScorer:
        if artifact.kind != "ncf" or WEIGHTS_FILE not in artifact.files:
            raise ValueError(f"not an NCF artifact (kind {artifact.kind!r}, files {sorted(artifact.files)})")
        return cls(artifact.user_names, artifact.song_names, weights_from_bytes(artifact.files[WEIGHTS_FILE]),
                   backend)

    def weights(self) -> dict[str, np.ndarray]:
        return self._net.weights()

    def user_rows(self, names: object) -> np.ndarray:
        arr = np.asarray(names, dtype=object)
        get = self._user_row.get
        return np.fromiter((get(u, -1) for u in arr.ravel()), np.int64, arr.size).reshape(arr.shape)

    def song_rows(self, names: object) -> np.ndarray:
        arr = np.asarray(names, dtype=object)
        get = self._song_row.get
        return np.fromiter((get(s, -1) for s in arr.ravel()), np.int64, arr.size).reshape(arr.shape)

    def score(self, user_rows: np.ndarray, song_rows: np.ndarray) -> np.ndarray:
        """NeuMF logits, float32 (U, C), for user rows (U,) and their candidate song rows (U, C)."""
        users = _check_rows(user_rows, len(self.user_names), 1, "user_rows")
        songs = _check_rows(song_rows, len(self.song_names), 2, "song_rows")
        if songs.shape[0] != len(users):
            raise ValueError(f"song_rows has {songs.shape[0]} rows for {len(users)} users")
        flat_u = np.repeat(users, songs.shape[1])
        flat_s = songs.ravel()
        out = np.empty(len(flat_u), dtype=np.float32)
        for start in range(0, len(flat_u), CHUNK_PAIRS):
            sl = slice(start, start + CHUNK_PAIRS)
            out[sl] = self._net.score_pairs(flat_u[sl], flat_s[sl])
        return out.reshape(songs.shape)

    def score_all(self, user_rows: np.ndarray) -> np.ndarray:
        """NeuMF logits of every song, float32 (U, n_songs)."""
        users = _check_rows(user_rows, len(self.user_names), 1, "user_rows")
        out = np.empty((len(users), len(self.song_names)), dtype=np.float32)
        step = max(1, CHUNK_PAIRS // max(1, len(self.song_names)))
        for start in range(0, len(users), step):
            out[start:start + step] = self._net.score_all(users[start:start + step])
        return out
