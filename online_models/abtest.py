"""A/B tests between two model versions: who is in which arm, and how each arm's lists do.

Users are split by a stable hash of ``salt + user_id`` (the same in every worker, process and
restart), so a user always sees one arm for the whole test. Each arm's online metric is read off
the stream itself: after a list is served to a user, each of that user's next ``horizon`` plays
counts as a *hit* when the song was on the list. The hit rate per arm is hits / plays observed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from online_models.batch import SKIP, EventBatch

CONTROL = "control"
TREATMENT = "treatment"
ARMS = (CONTROL, TREATMENT)
_BUCKETS = 1 << 32


def in_treatment(user_ids: np.ndarray, salt: str, share: float) -> np.ndarray:
    """Boolean per user: True for the ``share`` of users (by stable hash) in the treatment arm."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"treatment share must be within [0, 1], got {share}")
    users = np.asarray(user_ids, dtype=object)
    if users.ndim != 1:
        raise ValueError(f"user_ids must be one-dimensional, got shape {users.shape}")
    buckets = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{salt}\x00{u}".encode(), digest_size=4).digest(), "little")
         for u in users), dtype=np.int64, count=len(users))
    return buckets < round(share * _BUCKETS)


@dataclass
class ArmMetrics:
    """Per-arm hits of served lists over each user's next ``horizon`` plays (bounded memory)."""

    horizon: int = 10
    max_users: int = 200_000
    served: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    plays: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    # user -> (arm, songs on the last list served, plays observed since it was served)
    _lists: OrderedDict[str, tuple[str, frozenset[str], int]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.horizon <= 0:
            raise ValueError("horizon must be positive")

    def observe(self, batch: EventBatch) -> None:
        """Score a batch of events against the lists served before it (call before ``record``)."""
        lists = self._lists
        for user, song, kind in zip(batch.user_ids.tolist(), batch.song_ids.tolist(), batch.kinds.tolist(),
                                    strict=True):
            entry = lists.get(user)
            if entry is None or kind == SKIP:
                continue
            arm, songs, seen = entry
            if seen >= self.horizon:
                continue
            self.plays[arm] += 1
            self.hits[arm] += song in songs
            lists[user] = (arm, songs, seen + 1)

    def record(self, user_ids: np.ndarray, arm: str, song_ids: np.ndarray) -> None:
        """The lists just served to ``user_ids`` (rows of ``song_ids``; "" pads) from ``arm``."""
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}")
        if len(user_ids) != len(song_ids):
            raise ValueError(f"{len(user_ids)} users but {len(song_ids)} lists")
        for user, row in zip(user_ids.tolist(), song_ids.tolist(), strict=True):
            self._lists[user] = (arm, frozenset(s for s in row if s), 0)
            self._lists.move_to_end(user)
        self.served[arm] += len(user_ids)
        while len(self._lists) > self.max_users:
            self._lists.popitem(last=False)

    def summary(self) -> dict[str, dict[str, float]]:
        return {arm: {"served": self.served[arm], "plays": self.plays[arm], "hits": self.hits[arm],
                      "hit_rate": self.hits[arm] / self.plays[arm] if self.plays[arm] else 0.0} for arm in ARMS}


def combine(summaries: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Sum per-arm counts of several workers and recompute the rates."""
    out: dict[str, dict[str, float]] = {arm: {"served": 0, "plays": 0, "hits": 0} for arm in ARMS}
    for s in summaries:
        for arm in ARMS:
            for key in ("served", "plays", "hits"):
                out[arm][key] += s.get(arm, {}).get(key, 0)
    for arm in ARMS:
        out[arm]["hit_rate"] = out[arm]["hits"] / out[arm]["plays"] if out[arm]["plays"] else 0.0
    return out
