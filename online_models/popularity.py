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
        idx = np.argpartition(-self._scaled, n_eff - 1)[:n_eff]
        idx = idx[np.lexsort((self._keys[idx], -self._scaled[idx]))]
        keys = self._keys[idx]
        vals = self.scores(keys)
        self._top_cache = (n, keys, vals)
        return keys, vals

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys and their current decayed counts."""
        return self._keys.copy(), self.scores(self._keys)
