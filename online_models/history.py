"""Per-user online state: decayed positive (plays) and negative (skips) engagement per song.

Everything is updated a batch at a time: events are grouped with numpy (one sort per batch), the
touched users' rows are merged in one vectorised pass and only then split back per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online_models.batch import SKIP, EventBatch

DAY = 86400.0


@dataclass
class UserRows:
    """All history rows of a set of users, concatenated; ``slots[i]`` is the user's position."""

    slots: np.ndarray
    keys: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    last_ts: np.ndarray  # per row: when the user last engaged with that song

    def __len__(self) -> int:
        return len(self.slots)


def _decay(dt: np.ndarray, half_life_s: float) -> np.ndarray:
    if half_life_s <= 0:
        return np.ones_like(dt)
    return np.exp2(-np.maximum(dt, 0.0) / half_life_s)


def engagement(batch: EventBatch, full_play_ms: float, skip_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) engagement of each event: a play counts 1, or ms_played/full_play_ms
    when shorter; a skip counts ``skip_weight`` negative."""
    ms = batch.ms_played
    play_w = np.where(np.isnan(ms), 1.0, np.clip(np.nan_to_num(ms) / full_play_ms, 0.05, 1.0))
    is_skip = batch.kinds == SKIP
    return np.where(is_skip, 0.0, play_w), np.where(is_skip, skip_weight, 0.0)


class HistoryStore:
    """Decayed per-user engagement with songs; weights are kept as of each user's latest event."""

    def __init__(self, half_life_days: float = 90.0, max_history: int = 500,
                 full_play_ms: float = 30000.0, skip_weight: float = 1.0) -> None:
        if max_history <= 0:
            raise ValueError("max_history must be positive")
        self.half_life_s = half_life_days * DAY
        self.max_history = max_history
        self.full_play_ms = full_play_ms
        self.skip_weight = skip_weight
        # user -> (keys int64[m], pos f64[m], neg f64[m], last_ts f64[m], user_ts float)
        self._rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = {}
        # user -> sorted keys of songs trimmed from the rows: still heard, so still filtered
        self._forgotten: dict[str, np.ndarray] = {}
        self.max_forgotten = 20 * max_history
        # user -> update generation: lets callers cache anything derived from a user's history
        self._stamps: dict[str, int] = {}
        self._clock = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, user: object) -> bool:
        return user in self._rows

    def users(self) -> np.ndarray:
        return np.asarray(list(self._rows), dtype=object)

    def sizes(self, users: np.ndarray) -> np.ndarray:
        """Number of songs in each user's history (0 for unknown users)."""
        get = self._rows.get
        return np.fromiter((len(r[0]) if (r := get(u)) is not None else 0 for u in users),
                           dtype=np.int64, count=len(users))

    def inactive(self, before: float) -> np.ndarray:
        """Users whose latest event is older than ``before``."""
        return np.asarray([u for u, r in self._rows.items() if r[4] < before], dtype=object)

    def last_seen(self, users: np.ndarray) -> np.ndarray:
        get = self._rows.get
        return np.fromiter((r[4] if (r := get(u)) is not None else np.nan for u in users),
                           dtype=np.float64, count=len(users))

    def stamps(self, users: np.ndarray) -> np.ndarray:
        """Generation of each user's history (-1 for unknown users); it changes on every update."""
        get = self._stamps.get
        return np.fromiter((get(u, -1) for u in users), dtype=np.int64, count=len(users))

    def update(self, batch: EventBatch) -> np.ndarray:
        """Fold a batch of events into the users' histories; returns the distinct users touched."""
        if len(batch) == 0:
            return np.empty(0, dtype=object)
        touched, inv = np.unique(batch.user_ids, return_inverse=True)
        pos_new, neg_new = engagement(batch, self.full_play_ms, self.skip_weight)
        # every user's new reference time: its latest event, never earlier than what it had
        prev = self.last_seen(touched)
        ref = np.full(len(touched), -np.inf)
        np.maximum.at(ref, inv, batch.ts)
        ref = np.fmax(ref, prev)
        # existing rows of touched users, decayed to the new reference time
        old = self.gather(touched, decay_to=ref)
        d_new = _decay(ref[inv] - batch.ts, self.half_life_s)
        slots = np.concatenate([old.slots, inv])
        keys = np.concatenate([old.keys, batch.song_keys])
        pos = np.concatenate([old.pos, pos_new * d_new])
        neg = np.concatenate([old.neg, neg_new * d_new])
        last = np.concatenate([old.last_ts, batch.ts])
        order = np.lexsort((keys, slots))
        slots, keys, pos, neg, last = slots[order], keys[order], pos[order], neg[order], last[order]
        start = np.flatnonzero(np.r_[True, (slots[1:] != slots[:-1]) | (keys[1:] != keys[:-1])])
        slots, keys = slots[start], keys[start]
        pos, neg = np.add.reduceat(pos, start), np.add.reduceat(neg, start)
        last = np.maximum.reduceat(last, start)
        bounds = np.searchsorted(slots, np.arange(len(touched) + 1))
        self._clock += 1
        for i, user in enumerate(touched):
            self._stamps[user] = self._clock
            a, b = bounds[i], bounds[i + 1]
            row = (keys[a:b], pos[a:b], neg[a:b], last[a:b])
            if b - a > self.max_history:
                order = np.argsort(-(row[1] + row[2]), kind="stable")
                keep = np.sort(order[: self.max_history])
                self._forget(user, row[0][order[self.max_history:]])
                row = tuple(col[keep] for col in row)  # type: ignore[assignment]
            self._rows[user] = (*row, float(ref[i]))
        return touched

    def drop_users(self, users: np.ndarray) -> int:
        """Erase users' histories entirely (a forgotten user); returns how many had one. A later
        event starts a new history."""
        dropped = 0
        for user in users:
            dropped += self._rows.pop(user, None) is not None
            self._forgotten.pop(user, None)
            self._stamps.pop(user, None)
        return dropped

    def gather(self, users: np.ndarray, decay_to: np.ndarray | None = None) -> UserRows:
        """Concatenated rows of ``users``; weights decayed to ``decay_to`` (default: each user's
        own latest event, i.e. as stored)."""
        get = self._rows.get
        parts = [(i, r) for i, u in enumerate(users) if (r := get(u)) is not None]
        if not parts:
            e = np.empty(0)
            return UserRows(np.empty(0, np.int64), np.empty(0, np.int64), e, e.copy(), e.copy())
        lengths = np.array([len(r[0]) for _, r in parts])
        slots = np.repeat(np.array([i for i, _ in parts], dtype=np.int64), lengths)
        keys = np.concatenate([r[0] for _, r in parts])
        pos = np.concatenate([r[1] for _, r in parts])
        neg = np.concatenate([r[2] for _, r in parts])
        last = np.concatenate([r[3] for _, r in parts])
        if decay_to is not None:
            stored = np.repeat(np.array([r[4] for _, r in parts]), lengths)
            factor = _decay(np.asarray(decay_to, dtype=np.float64)[slots] - stored, self.half_life_s)
            pos, neg = pos * factor, neg * factor
        return UserRows(slots, keys, pos, neg, last)

    def _forget(self, user: str, keys: np.ndarray) -> None:
        merged = np.union1d(self._forgotten.get(user, np.empty(0, np.int64)), keys)
        self._forgotten[user] = merged[-self.max_forgotten:] if len(merged) > self.max_forgotten else merged

    def seen(self, users: np.ndarray, rows: UserRows | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(slot, song key) of every song ``users`` played or skipped: their rows (``rows``, when
        the caller has gathered them already) in their order, then the songs trimmed from the rows
        (up to ``max_forgotten`` per user), which they have still heard."""
        rows = self.gather(users) if rows is None else rows
        get = self._forgotten.get
        extra = [(i, f) for i, u in enumerate(users) if (f := get(u)) is not None]
        if not extra:
            return rows.slots, rows.keys
        slots = np.repeat(np.array([i for i, _ in extra], np.int64), [len(f) for _, f in extra])
        return np.concatenate([rows.slots, slots]), np.concatenate([rows.keys] + [f for _, f in extra])
