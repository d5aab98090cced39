"""Serving a SASRec version: a user's query vector is the model's state after their recent plays.

The worker keeps each user's latest plays in order (``OnlineState.recent``); :func:`user_queries`
turns them into query vectors for the version's FAISS index (the item embeddings), and the gate
calls the same :meth:`SequenceQueries.vectors` on the held-out users' training plays. Everything is
one batch of numpy: song keys -> item rows, the training rule for repeats, then one forward pass of
the numpy encoder for the users whose history changed since their vector was cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.song_index import SongIndex
from online_models.sasrec import SASRecEncoder, SASRecModel
from online_models.sasrec_spec import WEIGHTS_FILE, SASRecConfig

if TYPE_CHECKING:  # serving imports this module to build a version's query side
    from online_models.serving import ServingModel
    from online_models.state import OnlineState


def _right_align(items: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rows of ``items`` with only ``keep`` left, moved right in their order; 0 (padding) on the left."""
    order = np.argsort(keep, axis=1, kind="stable")  # dropped first, kept after, each in their order
    return np.take_along_axis(np.where(keep, items, 0), order, axis=1)


def apply_repeats(items: np.ndarray, repeats: str) -> np.ndarray:
    """The training rule for repeated plays (``build_sequences``) on right-aligned item rows (0 = pad).
    With ``first`` only the window is known here, so an older play outside it does not count."""
    if repeats == "collapse":
        prev = np.concatenate([np.zeros((len(items), 1), items.dtype), items[:, :-1]], axis=1)
        return _right_align(items, (items != 0) & (items != prev))
    if repeats == "first":
        length = items.shape[1]
        earlier = np.tril(np.ones((length, length), bool), -1)  # [j, i]: position i is before j
        dup = ((items[:, :, None] == items[:, None, :]) & earlier).any(axis=2)
        return _right_align(items, (items != 0) & ~dup)
    return items


class SequenceQueries:
    """A sasrec version's query side: the numpy encoder and its vocabulary's place in the index.

    The version's index is built over ``item_names`` in order, so index row r is item row r + 1;
    songs indexed later from catalog events (rows past the vocabulary) have no embedding to read."""

    def __init__(self, model: SASRecModel) -> None:
        self.config: SASRecConfig = model.config
        self.encoder: SASRecEncoder = model.encoder()
        self.n_items = len(model.item_names)

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> SequenceQueries:
        """Raises ValueError when the weights are missing or do not match the version's songs."""
        if artifact.kind != "sasrec" or WEIGHTS_FILE not in artifact.files:
            raise ValueError(f"not a SASRec artifact (kind {artifact.kind!r}, files {sorted(artifact.files)})")
        model = SASRecModel.from_bytes(artifact.files[WEIGHTS_FILE])
        if list(model.item_names) != list(artifact.song_names):
            raise ValueError("the SASRec vocabulary differs from the version's songs")
        queries = cls(model)
        if not np.array_equal(queries.encoder.item_embeddings, artifact.item_factors):
            raise ValueError("the version's item factors are not the SASRec item embeddings")
        return queries

    def item_rows(self, index: SongIndex, keys: np.ndarray) -> np.ndarray:
        """(U, max_len) right-aligned item rows of (U, L) song keys (-1 = none), after the repeat rule;
        songs outside the vocabulary are left out, as in training."""
        rows = index.rows(keys)
        items = np.where((rows >= 0) & (rows < self.n_items), rows + 1, 0)
        items = apply_repeats(_right_align(items, items > 0), self.config.repeats)
        return items[:, -self.config.max_len:]

    def vectors(self, index: SongIndex, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(U, d) query vectors of (U, L) song keys played in order (-1 = none) and how many of those
        plays the model knows; a user with none gets a zero vector."""
        keys = np.asarray(keys)
        if keys.ndim != 2 or (keys.size and keys.dtype.kind not in "iu"):
            raise ValueError(f"keys must be a 2-d integer array of song keys, got {keys.dtype}{keys.shape}")
        items = self.item_rows(index, keys.astype(np.int64))
        known = (items > 0).sum(axis=1)
        out = np.zeros((len(items), self.config.factors), np.float32)
        warm = np.flatnonzero(known > 0)
        if len(warm):
            out[warm] = self.encoder.encode(items[warm])
        return out, known


def user_queries(state: OnlineState, model: ServingModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query vectors of ``users`` for a sasrec version from their recent plays, and how many of those
    plays it knows. Vectors are cached with the version and the user's history generation (a play
    changes both the sequence and the generation), so only users with new events are encoded."""
    queries = model.sequence
    if queries is None:
        raise ValueError(f"version {model.version} ({model.kind}) is not a sequence model")
    keys = state.recent.gather(users)
    items = queries.item_rows(model.index, keys)
    known = (items > 0).sum(axis=1)
    stamps = state.history.stamps(users)
    out = np.zeros((len(users), queries.config.factors), np.float32)
    stale = np.zeros(len(users), bool)
    for i, user in enumerate(users):  # one dict lookup per user, as the fold-in cache
        hit = state.vectors.get(user)
        if hit is not None and hit[0] == model.version and hit[1] == stamps[i]:
            out[i] = hit[2]
        else:
            stale[i] = True
    fresh = np.flatnonzero(stale & (known > 0))
    if len(fresh):
        out[fresh] = queries.encoder.encode(items[fresh])
    for j in np.flatnonzero(stale).tolist():
        state.vectors.put(users[j], model.version, int(stamps[j]), out[j])
    return out, known
