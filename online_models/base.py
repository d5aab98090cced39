"""The one contract every recommender implements, batched like implicit's RecommenderBase.

``fit`` learns from a whole log, ``partial_fit`` from the next micro-batch of events (the Faust
worker and the prequential replay call exactly this), and ``recommend`` answers for an array of
users at once. Results for a batch of users must equal the results for each user asked alone.
Models with song vectors also answer :class:`SimilarSongs`. ``tests/unit/test_contract.py`` finds
every subclass of :class:`Recommender` by itself and runs the contract on each.

The worker calls this contract plus one documented serving extension of ``OnlineALS`` (``serve``:
lists with their reasons and the popularity fallback, all from one model version). The prequential
replay calls ``recommend_with_pool`` instead of ``recommend`` on a model that has it
(:class:`PooledRecommender`): the same lists, plus the candidates they were ranked from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from online_models.batch import EventBatch

# the longest list any reader, writer or evaluation asks for
MAX_K = 500


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
    def concat(lists: Sequence[RecList]) -> RecList:
        """The users of ``lists`` (one version, one k) in order, as one RecList."""
        if not lists or len({r.version for r in lists}) != 1 or len({r.song_ids.shape[1] for r in lists}) != 1:
            raise ValueError("concat needs at least one RecList, all of one version and one k")
        if len(lists) == 1:
            return lists[0]
        return RecList(np.concatenate([r.song_ids for r in lists]), np.concatenate([r.scores for r in lists]),
                       np.concatenate([r.reasons for r in lists]), lists[0].version)

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

    # what the contract test builds and checks (river's estimator checks do the same)
    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Constructor arguments of a small instance that trains in a second."""
        return {}

    @classmethod
    def _unit_test_skips(cls) -> frozenset[str]:
        """Contract checks that do not apply to this model, by name."""
        return frozenset()


@runtime_checkable
class PooledRecommender(Protocol):
    """A two-stage recommender that can show its first stage: the candidates it ranked."""

    def recommend_with_pool(self, user_ids: np.ndarray, k: int = 10) -> tuple[RecList, np.ndarray]:
        """Exactly ``recommend(user_ids, k)``, plus each user's pool: (U, M) int64 song keys
        (``index_manager.keys.song_keys``, as ``EventBatch.song_keys``; -1 pads) of the candidates the
        list was ranked from (keys, not names: an evaluation compares them with every play, and naming
        every pool is per-song Python). It can then tell a song never retrieved from one retrieved
        and ranked below the list."""


@runtime_checkable
class SimilarSongs(Protocol):
    """Songs close to songs, from a model's song vectors."""

    def similar(self, song_ids: np.ndarray, k: int = 10) -> RecList:
        """One row per song of ``song_ids``: the ``k`` nearest other songs by cosine, best first.
        A song the model does not know gets a row of padding; ``version`` names the model version."""


def check_request(user_ids: object, k: int, what: str = "user_ids") -> np.ndarray:
    """Validate a recommend() (or similar()) request at the public entry point."""
    users = np.asarray(user_ids, dtype=object)
    if users.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array, got shape {users.shape}")
    if not isinstance(k, int | np.integer) or not 0 < k <= MAX_K:
        raise ValueError(f"k must be an integer within 1..{MAX_K}, got {k!r}")
    return users
