"""Dense row numbers for song keys, growing as new songs arrive (sparse matrices need rows, not keys)."""

from __future__ import annotations

import numpy as np

from index_manager.key_table import KeyTable


class KeyIndex:
    """Song key -> row, rows handed out in order of first appearance and never reused."""

    def __init__(self) -> None:
        self._table = KeyTable()

    def __len__(self) -> int:
        return len(self._table)

    @property
    def keys(self) -> np.ndarray:
        """Key of each row."""
        return self._table.keys

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 for keys never added (any shape)."""
        return self._table.lookup(keys)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (1-d), adding the ones not seen before."""
        keys = np.asarray(keys, dtype=np.int64)
        rows = self.lookup(keys)
        missing = rows < 0
        if missing.any():
            uniq, first = np.unique(keys[missing], return_index=True)
            self._table.add(uniq[np.argsort(first)])
            rows[missing] = self.lookup(keys[missing])
        return rows
