"""The one contract every recommender implements, batched like implicit's RecommenderBase.

``fit`` learns from a whole log, ``partial_fit`` from the next micro-batch of events (the Faust
worker and the prequential replay call exactly this), and ``recommend`` answers for an array of
users at once. Results for a batch of users must equal the results for each user asked alone
(``tests/contract.py`` checks this for every implementation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from online_models.batch import EventBatch


@dataclass(frozen=True)
class RecList:
    """Recommendations for U users, k each: arrays of shape (U, k).

    ``song_ids`` is padded with "" and ``scores`` with -inf when fewer than k songs qualify;
    ``reasons`` holds an explanation per song ("because you played X") or None.
    """

    song_ids: np.ndarray
    scores: np.ndarray
    reasons: np.ndarray
    version: str

    def __post_init__(self) -> None:
        if not (self.song_ids.shape == self.scores.shape == self.reasons.shape) or self.song_ids.ndim != 2:
            raise ValueError("song_ids, scores and reasons must be 2-d arrays of one shape")

    def __len__(self) -> int:
        return len(self.song_ids)

    def row(self, i: int) -> list[tuple[str, float, str | None]]:
        """User i's list without padding."""
        return [(str(s), float(v), r) for s, v, r in zip(self.song_ids[i], self.scores[i], self.reasons[i],
                                                          strict=True) if s != ""]

    @staticmethod
    def empty(n_users: int, k: int, version: str = "") -> RecList:
        return RecList(np.full((n_users, k), "", dtype=object), np.full((n_users, k), -np.inf, np.float32),
                       np.full((n_users, k), None, dtype=object), version)


class Recommender(ABC):
    """Batch-first streaming recommender: fit / partial_fit / recommend."""

    name: str = "recommender"

    @abstractmethod
    def fit(self, events: EventBatch) -> None:
        """Learn from a whole log, replacing what was learnt before."""

    @abstractmethod
    def partial_fit(self, events: EventBatch) -> np.ndarray:
        """Learn from the next batch of events (in time order); returns the distinct users touched."""

    @abstractmethod
    def recommend(self, user_ids: np.ndarray, k: int = 10) -> RecList:
        """Top-``k`` songs for each user in ``user_ids`` (unknown users get a cold-start list)."""


def check_request(user_ids: object, k: int) -> np.ndarray:
    """Validate a recommend() request at the public entry point."""
    users = np.asarray(user_ids, dtype=object)
    if users.ndim != 1:
        raise ValueError(f"user_ids must be a 1-d array, got shape {users.shape}")
    if not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return users
