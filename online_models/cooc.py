"""Online song-to-song co-occurrence: which songs the same users play close together.

Every new play adds a vote between its song and each of the user's previous ``window`` plays (both
directions); a skip adds a negative vote between the skipped song and the user's recent plays.
Votes may decay with a half-life counted in events, so a stream's pace sets the memory, not the clock.

Memory is bounded: each song keeps its ``max_neighbours`` strongest neighbours. Updates go to a small
delta matrix merged into the main one when it has grown by an eighth (an LSM-style pair), so a batch
costs in proportion to its own votes, not to the whole matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from online_models.batch import PLAY, SKIP, EventBatch
from online_models.keyindex import KeyIndex
from online_models.ranking import heard
from online_models.sequences import RecentPlays

# scaled units: a vote at event t is stored as w * 2^(t/h); rebase before float64 overflows
_REBASE_EXPONENT = 400.0


@dataclass(frozen=True)
class CoocQuery:
    """Votes of U users' recent songs for every song, sparse (U, songs): ``votes`` raw, and
    ``normalised`` with each vote divided by (plays of one song x plays of the other) ** exponent."""

    votes: sp.csr_matrix
    normalised: sp.csr_matrix
    songs: KeyIndex  # column of each song key (columns added after the query are out of range)

    def top(self, m: int, skip: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(U, m) keys of up to ``m`` songs per user, half by normalised and half by raw votes; -1
        pads. ``skip`` = (user rows, song keys) never proposed: the songs a user co-played most
        are often their own, which must not take the room of the ones they have not heard."""
        picked = _top_per_row(self._without(self.normalised, skip), m - m // 2) + \
            _top_per_row(self._without(self.votes, skip), m // 2)
        r, c = picked.nonzero()  # row-major
        slot = np.arange(len(r)) - np.searchsorted(r, r)
        out = np.full((self.votes.shape[0], m), -1, np.int64)
        out[r, slot] = self.songs.keys[c]
        return out

    def _without(self, m: sp.csr_matrix, skip: tuple[np.ndarray, np.ndarray] | None) -> sp.csr_matrix:
        if skip is None or not len(skip[0]) or not m.nnz:
            return m
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        drop = heard(rows, self.songs.keys[m.indices], *skip)
        # copies: a matrix sharing the query's index arrays would re-sort them under its data
        return sp.csr_matrix((np.where(drop, 0.0, m.data), m.indices.copy(), m.indptr.copy()), shape=m.shape)

    def row_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's largest raw and normalised vote over every song (0 without any)."""
        if self.votes.shape[1] == 0:
            return np.zeros(self.votes.shape[0]), np.zeros(self.votes.shape[0])
        return (np.maximum(self.votes.max(axis=1).toarray().ravel(), 0.0),
                np.maximum(self.normalised.max(axis=1).toarray().ravel(), 0.0))

    def at(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw and normalised votes (0 where none) of the songs ``keys`` (U, M): row u for query user u."""
        cols = self.songs.lookup(keys)
        cols = np.where(cols < self.votes.shape[1], cols, -1)
        rows = np.broadcast_to(np.arange(len(keys))[:, None], keys.shape)
        return _values_at(self.votes, rows, cols), _values_at(self.normalised, rows, cols)


class CoOccurrence:
    def __init__(self, half_life_events: float = 0.0, max_neighbours: int = 200) -> None:
        if half_life_events < 0 or max_neighbours <= 0:
            raise ValueError("half_life_events must be >= 0 and max_neighbours > 0")
        self.half_life = float(half_life_events)
        self.max_neighbours = max_neighbours
        self.songs = KeyIndex()
        self.clock = 0  # events learnt so far
        self._base = 0.0  # exponent already divided out of the stored values
        self._main = sp.csr_matrix((0, 0), dtype=np.float64)
        self._delta = sp.csr_matrix((0, 0), dtype=np.float64)
        self._plays = np.empty(0, np.float64)  # decayed plays per row, in stored units

    def __len__(self) -> int:
        return len(self.songs)

    @property
    def nnz(self) -> int:
        return int(self._main.nnz + self._delta.nnz)

    def _scaled(self, weights: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Weights in stored units for events at batch ``positions`` (rebasing first if needed)."""
        if self.half_life <= 0:
            return np.asarray(weights, np.float64)
        exponent = (self.clock + np.asarray(positions, np.float64)) / self.half_life
        if len(exponent) and exponent.max() - self._base > _REBASE_EXPONENT:
            self._rebase(float(exponent.max()))
        return np.asarray(weights, np.float64) * np.exp2(exponent - self._base)

    def _now(self) -> float:
        """Stored units -> values as of the latest event."""
        return float(np.exp2(-(self.clock / self.half_life - self._base))) if self.half_life > 0 else 1.0

    def learn(self, earlier: np.ndarray, later: np.ndarray, weights: np.ndarray, positions: np.ndarray,
              played: np.ndarray, played_positions: np.ndarray, n_events: int) -> None:
        """One batch of ``n_events`` events: votes ``weights[i]`` between song keys ``earlier[i]`` and
        ``later[i]`` cast at batch position ``positions[i]``, and the songs ``played`` (at
        ``played_positions``) counted for normalisation. Advances the event clock by ``n_events``."""
        earlier, later = np.asarray(earlier, np.int64), np.asarray(later, np.int64)
        if not (earlier.shape == later.shape == np.shape(weights) == np.shape(positions)) or earlier.ndim != 1:
            raise ValueError("earlier, later, weights and positions must be 1-d arrays of one length")
        if np.shape(played) != np.shape(played_positions):
            raise ValueError("played and played_positions must have one shape")
        if n_events < 0:
            raise ValueError("n_events must be >= 0")
        played = np.asarray(played, np.int64)
        rows = self.songs.add(np.concatenate([earlier, later, played]))
        self._grow(len(self.songs))
        n, m = len(self.songs), len(earlier)
        a, b, p = rows[:m], rows[m:2 * m], rows[2 * m:]
        np.add.at(self._plays, p, self._scaled(np.ones(len(p)), played_positions))
        if m:
            w = self._scaled(weights, positions)
            votes = sp.csr_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
            votes.sum_duplicates()
            self._delta = (self._delta + votes).tocsr()
            if self._delta.nnz * 8 > max(self._main.nnz, 1 << 16):
                self._merge()
        self.clock += int(n_events)

    def _grow(self, n: int) -> None:
        if self._main.shape[0] < n:
            self._main.resize((n, n))
            self._delta.resize((n, n))
            self._plays = np.pad(self._plays, (0, n - len(self._plays)))

    def _rebase(self, exponent: float) -> None:
        factor = float(np.exp2(-(exponent - self._base)))
        self._main = self._main * factor
        self._delta = self._delta * factor
        self._plays *= factor
        self._base = exponent

    def _merge(self) -> None:
        merged = (self._main + self._delta).tocsr()
        merged.eliminate_zeros()
        self._delta = sp.csr_matrix(merged.shape, dtype=np.float64)
        self._main = self._prune(merged)

    def _prune(self, m: sp.csr_matrix) -> sp.csr_matrix:
        """Keep each row's ``max_neighbours`` largest votes, once rows exceed it by a quarter."""
        lengths = np.diff(m.indptr)
        if m.nnz <= 1.25 * self.max_neighbours * max(m.shape[0], 1) or lengths.max(initial=0) <= self.max_neighbours:
            return m
        row = np.repeat(np.arange(m.shape[0]), lengths)
        order = np.lexsort((m.indices, -m.data, row))
        rank = np.arange(m.nnz) - m.indptr[row[order]]
        keep = np.sort(order[rank < self.max_neighbours])  # row-major order, so the rows stay contiguous
        indptr = np.r_[0, np.cumsum(np.minimum(lengths, self.max_neighbours))]
        return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)

    def learn_events(self, recent: RecentPlays, events: EventBatch, skip_weight: float) -> None:
        """Learn a batch and append its plays to ``recent``: a play votes for the songs its user
        played within the last ``recent.length`` plays; a skip votes ``-skip_weight`` against the
        songs its user had played as of the batch's start."""
        plays = np.flatnonzero(events.kinds == PLAY)
        skips = np.flatnonzero(events.kinds == SKIP)
        before = recent.gather(events.user_ids[skips]) if len(skips) and skip_weight > 0 else None
        pairs = recent.update(events.user_ids[plays], events.song_keys[plays], recent.length)
        earlier, later, at = pairs.earlier, pairs.later, plays[pairs.event]
        weights = np.ones(len(earlier))
        if before is not None:
            r, c = np.nonzero(before >= 0)
            earlier, later = np.r_[earlier, before[r, c]], np.r_[later, events.song_keys[skips][r]]
            weights = np.r_[weights, np.full(len(r), -skip_weight)]
            at = np.r_[at, skips[r]]
        self.learn(earlier, later, weights, at.astype(np.float64), events.song_keys[plays],
                   plays.astype(np.float64), len(events))

    def plays(self, keys: np.ndarray) -> np.ndarray:
        """Decayed play counts of songs (0 for unknown ones), as of the latest event."""
        rows = self.songs.lookup(keys)
        counts = self._plays[np.maximum(rows, 0)] if len(self._plays) else np.zeros(rows.shape)
        return np.where(rows >= 0, counts, 0.0) * self._now()

    def query(self, recent: np.ndarray, exponent: float = 0.5) -> CoocQuery:
        """Votes of each user's ``recent`` (U, L) song keys (-1 padded) for every song."""
        recent = np.asarray(recent, np.int64)
        if recent.ndim != 2:
            raise ValueError(f"recent must be a 2-d array of song keys, got shape {recent.shape}")
        if exponent < 0:
            raise ValueError("exponent must be >= 0")
        n = len(self.songs)
        rows = self.songs.lookup(recent)
        u, j = np.nonzero(rows >= 0)
        q = sp.csr_matrix((np.ones(len(u)), (u, rows[u, j])), shape=(len(recent), n))
        # two products, never main + delta: adding them would cost the whole matrix per query
        votes = (q @ self._main + q @ self._delta).tocsr()
        norm = sp.diags(np.maximum(self._plays[:n], 1e-300) ** -exponent)
        qn = q @ norm
        normalised = ((qn @ self._main + qn @ self._delta) @ norm).tocsr()
        # the scale cancels in the normalised votes only when exponent is 1/2
        votes, normalised = votes * self._now(), normalised * self._now() ** (1.0 - 2.0 * exponent)
        votes.sort_indices()  # once, here: lookups need sorted rows and must never re-sort shared arrays
        normalised.sort_indices()
        return CoocQuery(votes, normalised, self.songs)


def _values_at(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """m[rows, cols] element-wise for arrays of one shape (0 where cols is -1 or the entry is empty);
    ``m`` has sorted indices."""
    n_cols = max(m.shape[1], 1)
    nz_rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    codes = nz_rows * n_cols + m.indices
    want = np.asarray(rows, np.int64) * n_cols + np.maximum(cols, 0)
    if not len(codes):
        return np.zeros(want.shape)
    pos = np.minimum(np.searchsorted(codes, want), len(codes) - 1)
    return np.where((codes[pos] == want) & (cols >= 0), m.data[pos], 0.0)


def _top_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """0/1 matrix marking each row's ``n`` largest positive entries (ties: lower column first), so a
    row's answer never depends on the other rows of the call; ``m`` has sorted indices."""
    lengths = np.diff(m.indptr)
    width = int(lengths.max(initial=0))
    if width == 0 or n <= 0:
        return sp.csr_matrix(m.shape)
    row = np.repeat(np.arange(m.shape[0]), lengths)
    slot = np.arange(m.nnz) - m.indptr[row]
    dense = np.full((m.shape[0], width), -np.inf)
    dense[row, slot] = np.where(m.data > 0, m.data, -np.inf)
    take = min(n, width)
    threshold = -np.partition(-dense, take - 1, axis=1)[:, take - 1:take]
    above = dense > threshold
    at = (dense == threshold) & np.isfinite(dense)
    room = take - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= room))
    r, s = np.nonzero(chosen)
    cols = m.indices[m.indptr[r] + s]
    return sp.csr_matrix((np.ones(len(r)), (r, cols)), shape=m.shape)
