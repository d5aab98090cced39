"""Song key -> row by hashing: the lookup every request makes for thousands of keys at once.

A binary search over sorted keys costs ~14 dependent cache misses per key; an open-addressing table
costs about one, but a dozen numpy calls per lookup. Measured (CPU time) among 17,600 songs: 5,000
keys 0.16 ms hashed against 0.64 ms by ``np.searchsorted``, 20,000 keys 0.51 against 3.1 ms; below
~1,000 keys the binary search is faster, so small lookups still take it.
"""

from __future__ import annotations

import numpy as np

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: spreads nearby keys over the table
_MIN_BITS = 4
HASHED_FROM = 1024  # keys per lookup from which hashing beats the binary search (measured crossover)


class KeyTable:
    """Rows 0..n-1 of distinct int64 keys, appended in order and never moved; linear probing over a
    power-of-two table kept at most 3/8 full (a miss stops at the first empty slot, ~1.5 probes),
    and the keys sorted for small lookups."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.keys = np.empty(0, np.int64)  # key of each row
        self._sorted = np.empty(0, np.int64)
        self._order = np.empty(0, np.int64)  # row of each key in ``_sorted``
        self._bits = _MIN_BITS
        self._slots = np.full(1 << _MIN_BITS, -1, np.int32)  # row in each slot, -1 empty
        if keys is not None:
            self.add(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (np.ascontiguousarray(keys).view(np.uint64) * _FIBONACCI) >> np.uint64(64 - self._bits)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key (any shape), -1 for keys not in the table."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self.keys) or not keys.size:
            return np.full(keys.shape, -1, np.int64)
        flat = keys.ravel()
        if len(flat) < HASHED_FROM:
            pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
            return np.where(self._sorted[pos] == keys, self._order[pos], -1)
        slot = self._home(flat)
        rows = self._slots[slot]
        # an empty slot (-1) reads the last key: its row is -1 whether that key matches or not
        match = self.keys[rows] == flat
        out = np.where(match, rows, -1).astype(np.int64)
        todo = np.flatnonzero((rows >= 0) & ~match)  # an empty slot ends a probe: the key is not here
        mask = np.uint64(len(self._slots) - 1)
        slot = slot[todo]
        while len(todo):
            slot = (slot + np.uint64(1)) & mask
            rows = self._slots[slot]
            match = self.keys[rows] == flat[todo]
            out[todo[match]] = rows[match]
            further = (rows >= 0) & ~match
            todo, slot = todo[further], slot[further]
        return out.reshape(keys.shape)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Append keys not in the table yet (distinct, 1-d); returns their rows."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.ndim != 1:
            raise ValueError(f"keys must be a 1-d array, got shape {keys.shape}")
        if len(np.unique(keys)) != len(keys) or (self.lookup(keys) >= 0).any():
            raise ValueError("keys must be distinct and new to the table")
        start = len(self.keys)
        self.keys = np.concatenate([self.keys, keys])
        order = np.argsort(keys)
        at = np.searchsorted(self._sorted, keys[order])
        self._sorted = np.insert(self._sorted, at, keys[order])
        self._order = np.insert(self._order, at, start + order)
        if len(self.keys) * 8 > len(self._slots) * 3:
            self._bits = max(int(np.ceil(np.log2(len(self.keys) * 8 / 3 + 1))), _MIN_BITS)
            self._slots = np.full(1 << self._bits, -1, np.int32)
            self._place(np.arange(len(self.keys)))
        else:
            self._place(np.arange(start, len(self.keys)))
        return np.arange(start, len(self.keys))

    def _place(self, rows: np.ndarray) -> None:
        mask = np.uint64(len(self._slots) - 1)
        slot = self._home(self.keys[rows])
        while len(rows):
            free = self._slots[slot] < 0
            self._slots[slot[free]] = rows[free]  # rows sharing a free slot: one of them lands
            placed = free & (self._slots[slot] == rows)
            rows, slot = rows[~placed], (slot[~placed] + np.uint64(1)) & mask
