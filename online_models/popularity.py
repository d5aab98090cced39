"""Time-decayed song popularity, updated a batch at a time."""

from __future__ import annotations

import numpy as np

from online_models.batch import PLAY, EventBatch
from online_models.history import DAY

# Counts are stored as Σ w·2^((t - t0)/h), so ranking never needs an O(songs) decay pass; t0 moves
# forward before the exponent can overflow float64.
_REBASE_EXPONENT = 400.0


class DecayedCounts:
    """Play counts per song key with exponential decay (half-life in days, 0 = no decay)."""

    def __init__(self, half_life_days: float = 30.0) -> None:
        self.half_life_s = half_life_days * DAY
        self._keys = np.empty(0, np.int64)  # sorted
        self._scaled = np.empty(0, np.float64)
        self._t0: float | None = None
        self._latest = -np.inf
        self._top_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def _exponent(self, ts: np.ndarray) -> np.ndarray:
        if self.half_life_s <= 0 or self._t0 is None:
            return np.zeros_like(ts)
        return (ts - self._t0) / self.half_life_s

    def add(self, keys: np.ndarray, weights: np.ndarray, ts: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) == 0:
            return
        ts = np.asarray(ts, dtype=np.float64)
        if self._t0 is None:
            self._t0 = float(ts.min())
        self._latest = max(self._latest, float(ts.max()))
        exps = self._exponent(ts)
        if exps.max() > _REBASE_EXPONENT:
            shift = float(exps.max())
            self._scaled *= np.exp2(-shift)
            self._t0 += shift * self.half_life_s
            exps = exps - shift
        contrib = np.asarray(weights, dtype=np.float64) * np.exp2(exps)
        uniq, inv = np.unique(keys, return_inverse=True)
        sums = np.bincount(inv, weights=contrib, minlength=len(uniq))
        pos = np.searchsorted(self._keys, uniq)
        present = (pos < len(self._keys)) & (self._keys[np.minimum(pos, len(self._keys) - 1)] == uniq) \
            if len(self._keys) else np.zeros(len(uniq), bool)
        self._scaled[pos[present]] += sums[present]
        if (~present).any():
            new_keys, new_vals = uniq[~present], sums[~present]
            at = np.searchsorted(self._keys, new_keys)
            self._keys = np.insert(self._keys, at, new_keys)
            self._scaled = np.insert(self._scaled, at, new_vals)
        self._top_cache = None

    def update(self, batch: EventBatch) -> None:
        """Count the plays of a batch (skips do not make a song popular)."""
        plays = batch.kinds == PLAY
        self.add(batch.song_keys[plays], np.ones(int(plays.sum())), batch.ts[plays])

    def scores(self, keys: np.ndarray) -> np.ndarray:
        """Decayed counts as of the latest event seen (0 for unknown songs)."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self._keys):
            return np.zeros(keys.shape)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[pos] == keys
        now = self._exponent(np.array([self._latest]))[0] if np.isfinite(self._latest) else 0.0
        return np.where(found, self._scaled[pos] * np.exp2(-now), 0.0)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular song keys and their decayed counts, best first."""
        if self._top_cache is not None and self._top_cache[0] >= n:
            return self._top_cache[1][:n], self._top_cache[2][:n]
        n_eff = min(n, len(self._keys))
        if n_eff == 0:
            return np.empty(0, np.int64), np.empty(0)
        idx = _top_rows(self._scaled, self._keys, n_eff)
        keys = self._keys[idx]
        vals = self.scores(keys)
        self._top_cache = (n, keys, vals)
        return keys, vals

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys and their current decayed counts."""
        return self._keys.copy(), self.scores(self._keys)


class PopularityLadder:
    """Play counts decayed at several half-lives (in events) at once, sharing one key table: the
    stream, not a constant, decides which memory predicts its next plays (the ranker weighs them)."""

    def __init__(self, half_lives: tuple[float, ...]) -> None:
        if not half_lives or any(h < 0 for h in half_lives):
            raise ValueError("half_lives must be a non-empty tuple of values >= 0 (0 = no decay)")
        self.half_lives = np.asarray(half_lives, np.float64)
        self._rate = np.where(self.half_lives > 0, 1.0 / np.maximum(self.half_lives, 1e-300), 0.0)
        self._keys = np.empty(0, np.int64)
        self._scaled = np.empty((0, len(half_lives)))
        self._base = np.zeros(len(half_lives))  # exponent divided out of the stored values
        self.events = 0
        self._top: dict[int, tuple[int, np.ndarray]] = {}
        self._log: tuple[float, np.ndarray] | None = None  # (floor, per-song table) until the next update
        self._peak = np.zeros(len(half_lives))  # largest stored value of each rung, kept up to date by update()
        self.hits = np.zeros(len(half_lives))  # plays each rung's top list would have caught

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def best(self) -> int:
        """The rung whose top lists caught the most plays so far (the shortest memory on ties)."""
        return int(np.argmax(self.hits))

    def observe(self, played: np.ndarray, widths: np.ndarray) -> None:
        """Before learning a batch: count, per rung, the plays whose song was within the first
        ``widths[i]`` of that rung's list (a list of k songs plus room for what the user heard)."""
        played = np.asarray(played, np.int64)
        if not len(played) or not len(self._keys):
            return
        widths = np.asarray(widths, np.int64)
        for r in range(len(self.half_lives)):
            top = self.top(int(widths.max()), r)
            order = np.argsort(top, kind="stable")
            pos = np.minimum(np.searchsorted(top[order], played), len(top) - 1)
            rank = np.where(top[order][pos] == played, order[pos], len(top))
            self.hits[r] += float((rank < widths).sum())

    def update(self, batch: EventBatch) -> None:
        plays = np.flatnonzero(batch.kinds == PLAY)
        clock = self.events + plays.astype(np.float64)
        self.events += len(batch)
        if not len(plays):
            return
        exps = clock[:, None] * self._rate[None, :]
        if (exps.max(axis=0) - self._base).max() > _REBASE_EXPONENT:
            shift = exps.max(axis=0) - self._base
            self._scaled *= np.exp2(-shift)
            self._peak *= np.exp2(-shift)
            self._base += shift
        contrib = np.exp2(exps - self._base)
        uniq, inv = np.unique(batch.song_keys[plays], return_inverse=True)
        sums = np.zeros((len(uniq), len(self.half_lives)))
        np.add.at(sums, inv, contrib)
        pos = np.searchsorted(self._keys, uniq)
        present = (pos < len(self._keys)) & (self._keys[np.minimum(pos, max(len(self._keys) - 1, 0))] == uniq) \
            if len(self._keys) else np.zeros(len(uniq), bool)
        self._scaled[pos[present]] += sums[present]
        if (~present).any():
            at = np.searchsorted(self._keys, uniq[~present])
            self._keys = np.insert(self._keys, at, uniq[~present])
            self._scaled = np.insert(self._scaled, at, sums[~present], axis=0)
        # counts only grow between rebases, so the new peak is among the old one and this batch's songs
        self._peak = np.maximum(self._peak, self._scaled[np.searchsorted(self._keys, uniq)].max(axis=0))
        self._top.clear()
        self._log = None

    def _now(self) -> np.ndarray:
        return np.exp2(self._base - (self.events - 1) * self._rate)

    def scores(self, keys: np.ndarray) -> np.ndarray:
        """Decayed counts (..., rungs) of song ``keys`` (any shape) as of the latest event; 0 if unknown."""
        keys = np.asarray(keys, np.int64)
        if not len(self._keys):
            return np.zeros((*keys.shape, len(self.half_lives)))
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = (self._keys[pos] == keys)[..., None]
        return np.where(found, self._scaled[pos] * self._now(), 0.0)

    def log_relative(self, keys: np.ndarray, floor: float) -> np.ndarray:
        """float32 (..., rungs): log(count / the rung's largest count + ``floor``) of song ``keys``
        (log(floor) if unknown). The per-song table is computed once per batch of events: requests
        between two updates only gather from it."""
        keys = np.asarray(keys, np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), max(len(self._keys) - 1, 0))
        row = np.where(self._keys[pos] == keys, pos, len(self._keys)) if len(self._keys) \
            else np.zeros(keys.shape, np.int64)  # the last row: an unknown song
        if self._log is None or self._log[0] != floor:
            scale = self._now() / self.maxima()
            if keys.size < len(self._keys):  # fewer lookups than songs (a small batch): no table
                known = (row < len(self._keys))[..., None]
                relative = np.where(known, self._scaled[np.minimum(row, len(self._keys) - 1)] * scale, 0.0)
                return np.log(relative + floor).astype(np.float32)
            relative = np.vstack([self._scaled * scale, np.zeros((1, len(self.half_lives)))])
            self._log = (floor, np.log(relative + floor).astype(np.float32))
        return self._log[1][row]

    def top(self, n: int, rung: int) -> np.ndarray:
        """Keys of the ``n`` most played songs at half-life ``rung`` (ties: lower key first)."""
        cached = self._top.get(rung)
        if cached is not None and cached[0] >= n:
            return cached[1][:n]
        n_eff = min(n, len(self._keys))
        if n_eff == 0:
            return np.empty(0, np.int64)
        idx = _top_rows(self._scaled[:, rung], self._keys, n_eff)
        self._top[rung] = (n, self._keys[idx])
        return self._keys[idx]

    def maxima(self) -> np.ndarray:
        """Largest decayed count of each rung (1 where nothing was counted)."""
        if not len(self._keys):
            return np.ones(len(self.half_lives))
        return np.maximum(self._peak * self._now(), 1e-300)


def _top_rows(values: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Rows of the ``n`` largest ``values``, best first, ties to the lower key: exactly, also at the
    n-th place, so the top n is the head of the top n + 1 (a cached longer top answers a shorter ask)."""
    if n < len(values):
        threshold = values[np.argpartition(-values, n - 1)[n - 1]]
        above = np.flatnonzero(values > threshold)
        tied = np.flatnonzero(values == threshold)
        idx = np.r_[above, tied[np.argsort(keys[tied], kind="stable")][:n - len(above)]]
    else:
        idx = np.arange(len(values))
    return idx[np.lexsort((keys[idx], -values[idx]))]
