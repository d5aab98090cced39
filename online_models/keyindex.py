"""Dense row numbers for song keys, growing as new songs arrive (sparse matrices need rows, not keys)."""

from __future__ import annotations

import numpy as np


class KeyIndex:
    """Song key -> row, rows handed out in order of first appearance and never reused."""

    def __init__(self) -> None:
        self._sorted = np.empty(0, np.int64)
        self._rows = np.empty(0, np.int64)  # row of each key in ``_sorted``
        self.keys = np.empty(0, np.int64)  # key of each row

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 for keys never added (any shape)."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self._sorted):
            return np.full(keys.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == keys, self._rows[pos], -1)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (1-d), adding the ones not seen before."""
        keys = np.asarray(keys, dtype=np.int64)
        rows = self.lookup(keys)
        missing = rows < 0
        if missing.any():
            uniq, first = np.unique(keys[missing], return_index=True)
            new = uniq[np.argsort(first)]
            new_rows = np.arange(len(self.keys), len(self.keys) + len(new))
            at = np.searchsorted(self._sorted, uniq)
            self._sorted = np.insert(self._sorted, at, uniq)
            self._rows = np.insert(self._rows, at, new_rows[np.argsort(np.argsort(first))])
            self.keys = np.concatenate([self.keys, new])
            rows[missing] = self.lookup(keys[missing])
        return rows
