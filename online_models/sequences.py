"""Per-user recent plays in order: what next-song signals (co-occurrence, the sequence model) read.

Updated a batch at a time: new plays are grouped by user with one sort, each user's previous window
and new plays are laid out in one flat array, and the (earlier song, later song, distance) pairs of
every new play are read off that array in one vectorised step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = -1  # song keys are non-negative (index_manager.keys), so -1 marks an empty slot


@dataclass(frozen=True)
class PlayPairs:
    """For every new play and each of the ``window`` plays before it by the same user."""

    earlier: np.ndarray  # song keys
    later: np.ndarray
    distance: np.ndarray  # 1 = the play just before
    event: np.ndarray  # index of the later play in the batch given to ``update``


class RecentPlays:
    """The last ``length`` songs each user played, most recent last."""

    def __init__(self, length: int = 50) -> None:
        if length <= 0:
            raise ValueError("length must be positive")
        self.length = length
        self._seqs: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, user: object) -> bool:
        return user in self._seqs

    def gather(self, users: np.ndarray, length: int | None = None) -> np.ndarray:
        """(U, length) song keys, right-aligned (most recent last), ``PAD`` where fewer plays."""
        n = self.length if length is None else min(length, self.length)
        out = np.full((len(users), n), PAD, np.int64)
        get = self._seqs.get
        for i, user in enumerate(users):
            seq = get(user)
            if seq is not None and len(seq):
                tail = seq[-n:]
                out[i, n - len(tail):] = tail
        return out

    def counts(self, users: np.ndarray) -> np.ndarray:
        get = self._seqs.get
        return np.fromiter((len(s) if (s := get(u)) is not None else 0 for u in users), np.int64, len(users))

    def forget(self, users: np.ndarray) -> None:
        for user in users:
            self._seqs.pop(user, None)

    def update(self, users: np.ndarray, keys: np.ndarray, window: int = 0) -> PlayPairs:
        """Append plays (``users[i]`` played ``keys[i]``, in time order) and return the pairs each
        new play forms with up to ``window`` earlier plays of its user (none when ``window`` is 0)."""
        users = np.asarray(users, dtype=object)
        keys = np.asarray(keys, dtype=np.int64)
        if users.shape != keys.shape or users.ndim != 1:
            raise ValueError("users and keys must be 1-d arrays of one length")
        if window < 0 or window > self.length:
            raise ValueError(f"window must be within [0, {self.length}]")
        empty = np.empty(0, np.int64)
        if not len(users):
            return PlayPairs(empty, empty, empty, empty)
        touched, inv = np.unique(users, return_inverse=True)
        order = np.argsort(inv, kind="stable")  # by user, time order kept within a user
        counts = np.bincount(inv, minlength=len(touched))
        block = self.length + counts
        start = np.r_[0, np.cumsum(block)[:-1]]
        flat = np.full(int(block.sum()), PAD, np.int64)
        old = self.gather(touched)
        flat[(start[:, None] + np.arange(self.length)).ravel()] = old.ravel()
        rank = np.arange(len(order)) - np.r_[0, np.cumsum(counts)[:-1]][inv[order]]
        where = start[inv[order]] + self.length + rank  # flat position of each new play, by user
        flat[where] = keys[order]
        # (play, distance) grid, distance-major so pairs come out nearest first; a distance <= length
        # never reaches into another user's block
        distance = np.arange(1, window + 1)[:, None]
        prev = flat[where[None, :] - distance]
        d, play = np.nonzero(prev != PAD)
        ends = start + block
        for i, user in enumerate(touched.tolist()):
            tail = flat[max(ends[i] - self.length, start[i]):ends[i]]
            self._seqs[user] = tail[tail != PAD].copy()
        return PlayPairs(prev[d, play], keys[order][play], (d + 1).astype(np.int64), order[play])
