"""Online song-to-song co-occurrence: which songs the same users play close together.

Every new play adds a vote between its song and each of the user's previous ``window`` plays (both
directions); a skip adds a negative vote between the skipped song and the user's recent plays.
Votes may decay with a half-life counted in events, so a stream's pace sets the memory, not the clock.

Memory is bounded: each song keeps its ``max_neighbours`` strongest neighbours. Updates go to a small
fresh matrix, merged into a delta matrix when it reaches a quarter of it, which is merged into the main
one at half of it (LSM-style levels), so a batch costs in proportion to its own votes, not to the whole matrix.
The main merge (an add and a prune of the whole matrix) runs in a helper thread while batches go on, and its
result replaces the main matrix a fixed number of events later, so the outcome never depends on timing.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from online_models.batch import PLAY, SKIP, EventBatch
from online_models.keyindex import KeyIndex
from online_models.sequences import RecentPlays

# scaled units: a vote at event t is stored as w * 2^(t/h); rebase before float64 overflows
_REBASE_EXPONENT = 400.0
_DENSE_FILL = 4  # a query's votes are looked up in dense rows when at least a quarter of the cells hold one
# a main merge takes ~0.1 s on Last.fm's 1.4M votes: at 1k events/s it is done long before this many
# events, so the batches meanwhile never wait for it; a burst (replay, backlog) waits at the swap instead
MERGE_LAG_EVENTS = 2048
_FRESH_MIN, _DELTA_MIN = 1 << 12, 1 << 16  # votes a level holds at least before it is merged on
_MAIN_MERGE_AT = 2  # delta is merged into main once it holds 1/_MAIN_MERGE_AT as many votes


class CoocQuery:
    """Votes of U users' recent songs for every song they reach, as one sparse row layout (CSR:
    ``indptr``, sorted column ``cols``) with two aligned values: ``votes`` raw, and ``normalised``
    divided by the candidate song's plays ** exponent (popular songs co-occur with everything)."""

    def __init__(self, indptr: np.ndarray, cols: np.ndarray, votes: np.ndarray, normalised: np.ndarray,
                 songs: KeyIndex, n_cols: int) -> None:
        self.indptr, self.cols, self.votes, self.normalised = indptr, cols, votes, normalised
        self.songs = songs  # column of each song key (columns added after the query are out of range)
        self.n_cols = n_cols
        self.rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        self._codes = self.rows * max(n_cols, 1) + cols  # sorted: rows in order, sorted columns within

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def top(self, m: int, skip: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(U, m) keys of up to ``m`` songs per user, half by normalised and half by raw votes; -1
        pads. ``skip`` = (user rows, song keys) never proposed: the songs a user co-played most
        are often their own, which must not take the room of the ones they have not heard."""
        out = np.full((len(self), m), -1, np.int64)
        if not len(self.cols) or m <= 0:
            return out
        normalised = np.where(self.votes > 0, self.normalised, -np.inf)
        votes = np.where(self.votes > 0, self.votes, -np.inf)
        if skip is not None and len(skip[0]):
            # a user's heard songs are found among their entries by one binary search each (entries
            # are in (row, column) order), where looking every entry up among the heard would cost more
            cols = self.songs.lookup(skip[1])
            inside = (cols >= 0) & (cols < self.n_cols)
            codes = np.asarray(skip[0], np.int64)[inside] * max(self.n_cols, 1) + cols[inside]
            at = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
            at = at[self._codes[at] == codes]
            normalised[at] = votes[at] = -np.inf
        if self._dense():
            picked = self._top_dense(normalised, m - m // 2) | self._top_dense(votes, m // 2)
        else:
            picked = _top_per_row(self.indptr, normalised, m - m // 2) | _top_per_row(self.indptr, votes, m // 2)
        at = np.flatnonzero(picked)  # row-major, columns in order
        rows = self.rows[at]
        out[rows, np.arange(len(at)) - np.searchsorted(rows, rows)] = self.songs.keys[self.cols[at]]
        return out

    def _dense(self) -> bool:
        """Whether at least 1/_DENSE_FILL of the cells hold a vote: one dense row per user then costs
        no more memory than the entries, and a partition of rows beats one row at a time."""
        return len(self) * max(self.n_cols, 1) <= _DENSE_FILL * len(self._codes)

    def _top_dense(self, values: np.ndarray, count: int) -> np.ndarray:
        """:func:`_top_per_row` over dense rows, for ``count`` per row (same answer: ties go to the
        lower column)."""
        flat = np.full(len(self) * max(self.n_cols, 1), -np.inf)
        flat[self._codes] = values
        dense = flat.reshape(len(self), -1)
        if count <= 0:
            return np.zeros(len(self._codes), bool)
        take = min(count, dense.shape[1])
        threshold = -np.partition(-dense, take - 1, axis=1)[:, take - 1]
        above = dense > threshold[:, None]  # every finite value in a row with fewer than ``take``
        tied = (dense == threshold[:, None]) & np.isfinite(threshold)[:, None]
        places = take - above.sum(axis=1)
        crowded = np.flatnonzero(tied.sum(axis=1) > places)
        if len(crowded):
            tied[crowded] &= np.cumsum(tied[crowded], axis=1) <= places[crowded][:, None]
        return (above | tied).ravel()[self._codes]

    def row_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's largest raw and normalised vote over every song (0 without any)."""
        # a user's entries are contiguous: one reduction per row segment, where ufunc.at goes entry by entry
        filled = np.flatnonzero(np.diff(self.indptr) > 0)
        top_votes, top_normalised = np.zeros(len(self)), np.zeros(len(self))
        if len(filled):
            starts = self.indptr[filled]
            top_votes[filled] = np.maximum(np.maximum.reduceat(self.votes, starts), 0.0)
            top_normalised[filled] = np.maximum(np.maximum.reduceat(self.normalised, starts), 0.0)
        return top_votes, top_normalised

    def at(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw and normalised votes (0 where none) of the songs ``keys`` (U, M): row u for query user u."""
        cols = self.songs.lookup(keys)
        cols = np.where(cols < self.n_cols, cols, -1)
        if not len(self._codes):
            return np.zeros(keys.shape), np.zeros(keys.shape)
        want = np.arange(len(keys))[:, None] * max(self.n_cols, 1) + np.maximum(cols, 0)
        if self._dense():
            cells = len(self) * max(self.n_cols, 1)
            votes, normalised = np.zeros(cells), np.zeros(cells)
            votes[self._codes], normalised[self._codes] = self.votes, self.normalised
            valid = cols >= 0
            return np.where(valid, votes[want], 0.0), np.where(valid, normalised[want], 0.0)
        pos = np.minimum(np.searchsorted(self._codes, want), len(self._codes) - 1)
        found = (self._codes[pos] == want) & (cols >= 0)
        return np.where(found, self.votes[pos], 0.0), np.where(found, self.normalised[pos], 0.0)


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
        self._fresh = sp.csr_matrix((0, 0), dtype=np.float64)
        self._plays = np.empty(0, np.float64)  # decayed plays per row, in stored units
        # a delta level handed to a main merge still running: queries read it until the merge lands
        self._frozen = sp.csr_matrix((0, 0), dtype=np.float64)
        self._pending: Future[sp.csr_matrix] | None = None
        self._pending_due = 0  # event clock at which the merge's result replaces main and frozen
        self._pending_factor = 1.0  # rebases since the merge started, applied to its result
        self._executor: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.songs)

    @property
    def nnz(self) -> int:
        return int(self._main.nnz + self._frozen.nnz + self._delta.nnz + self._fresh.nnz)

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
        if self._pending is not None and self.clock >= self._pending_due:
            self._land_merge()
        # a vote's songs were almost always played (and added) already, in this batch or an earlier
        # one: the batch's few plays are added first, and the many votes only looked up
        p = self.songs.add(played)
        ab = self.songs.lookup(np.concatenate([earlier, later]))
        if (ab < 0).any():
            ab = self.songs.add(np.concatenate([earlier, later]))
        self._grow(len(self.songs))
        n, m = len(self.songs), len(earlier)
        a, b = ab[:m], ab[m:]
        np.add.at(self._plays, p, self._scaled(np.ones(len(p)), played_positions))
        if m:
            w = self._scaled(weights, positions)
            votes = sp.csr_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
            votes.sum_duplicates()
            # three levels, each merged into the next when it reaches a fraction of it: a batch
            # copies only the small fresh level, never the whole delta or main matrix
            self._fresh = (self._fresh + votes).tocsr()
            if self._fresh.nnz * 4 > max(self._delta.nnz, _FRESH_MIN):
                self._delta = (self._delta + self._fresh).tocsr()
                self._fresh = sp.csr_matrix(self._fresh.shape, dtype=np.float64)
                if self._delta.nnz * _MAIN_MERGE_AT > max(self._main.nnz, _DELTA_MIN):
                    self._start_merge(int(n_events))
        self.clock += int(n_events)

    def _grow(self, n: int) -> None:
        if self._main.shape[0] < n:
            self._main.resize((n, n))
            self._delta.resize((n, n))
            self._fresh.resize((n, n))
            self._frozen.resize((n, n))
            self._plays = np.pad(self._plays, (0, n - len(self._plays)))

    def _rebase(self, exponent: float) -> None:
        factor = float(np.exp2(-(exponent - self._base)))
        self._main = self._main * factor
        self._delta = self._delta * factor
        self._fresh = self._fresh * factor
        self._frozen = self._frozen * factor
        self._pending_factor *= factor
        self._plays *= factor
        self._base = exponent

    def _merge(self) -> None:
        """Merge every level into main now (waits for a merge in flight first)."""
        if self._pending is not None:
            self._land_merge()
        if self._delta.nnz or self._fresh.nnz:
            self._start_merge(0)
            self._land_merge()

    def _start_merge(self, n_events: int) -> None:
        """Hand main + delta to the helper thread; delta becomes the frozen level queries still read."""
        if self._pending is not None:
            self._land_merge()  # a merge due before the next one starts: only after a long burst
        if self._fresh.nnz:
            self._delta = (self._delta + self._fresh).tocsr()
            self._fresh = sp.csr_matrix(self._delta.shape, dtype=np.float64)
        # the thread gets the arrays, never the matrices: _grow and _rebase replace a level's arrays,
        # they never write into them, so what the thread reads does not change under it
        parts = [(m.data, m.indices, m.indptr, m.shape) for m in (self._main, self._delta)]
        self._frozen, self._delta = self._delta, sp.csr_matrix(self._delta.shape, dtype=np.float64)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cooc-merge")
        self._pending = self._executor.submit(self._merged, parts)
        self._pending_due = self.clock + n_events + MERGE_LAG_EVENTS
        self._pending_factor = 1.0

    def _merged(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]]) -> sp.csr_matrix:
        main, delta = (sp.csr_matrix((d, i, p), shape=shape) for d, i, p, shape in parts)
        merged = (main + delta).tocsr()
        merged.eliminate_zeros()
        return self._prune(merged)

    def _land_merge(self) -> None:
        """Replace main and frozen by the merge's result (waiting for it if it is still running)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            merged = pending.result()
        except BaseException:
            # no vote is lost: the frozen level goes back into delta, for the next merge to take
            self._delta = (self._delta + self._frozen).tocsr()
            self._frozen = sp.csr_matrix(self._delta.shape, dtype=np.float64)
            raise
        if self._pending_factor != 1.0:
            merged = merged * self._pending_factor
        n = self._main.shape[0]
        if merged.shape[0] < n:
            merged.resize((n, n))
        self._main = merged
        self._frozen = sp.csr_matrix((n, n), dtype=np.float64)

    def _prune(self, m: sp.csr_matrix) -> sp.csr_matrix:
        """Cut rows grown past 1.5 x ``max_neighbours`` back to their ``max_neighbours`` largest votes
        (ties: lower column)."""
        lengths = np.diff(m.indptr)
        # a row is cut back once it has half as many again: far fewer sorts for a little more memory
        over = lengths > self.max_neighbours + self.max_neighbours // 2
        if not over.any():
            return m
        take = self.max_neighbours
        keep = np.ones(m.nnz, bool)
        long_rows = np.flatnonzero(over)
        # rows of similar length share one padded array (at most 2x padding); a partition finds
        # each row's take-th largest vote, so nothing is sorted: only rows with more votes tied at
        # that threshold than places left need a count along the row (ties go to lower columns)
        bucket = np.ceil(np.log2(lengths[long_rows])).astype(np.int64)
        for b in np.unique(bucket):
            rows = long_rows[bucket == b]
            width = int(lengths[rows].max())
            entry = m.indptr[rows][:, None] + np.arange(width)
            inside = np.arange(width) < lengths[rows][:, None]
            dense = np.where(inside, m.data[np.where(inside, entry, 0)], -np.inf)
            threshold = -np.partition(-dense, take - 1, axis=1)[:, take - 1]
            above = dense > threshold[:, None]
            tied = dense == threshold[:, None]
            places = take - above.sum(axis=1)
            kept = above | tied
            crowded = tied.sum(axis=1) > places
            if crowded.any():
                kept[crowded] = above[crowded] | (tied[crowded] & (np.cumsum(tied[crowded], axis=1)
                                                                   <= places[crowded][:, None]))
            keep[entry[inside & ~kept]] = False
        indptr = np.r_[0, np.cumsum(np.where(over, take, lengths))]
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

    def query(self, recent: np.ndarray, exponent: float = 0.5, both_sides: bool = False) -> CoocQuery:
        """Votes of each user's ``recent`` (U, L) song keys (-1 padded) for every song they reach;
        the normalised votes divide by the candidate song's plays ** ``exponent``. With
        ``both_sides`` each recent song's votes are divided by its own plays ** ``exponent`` too
        (``votes`` are then weighted the same way): one product either way, where raw votes and
        two-sided normalisation together would cost two."""
        recent = np.asarray(recent, np.int64)
        if recent.ndim != 2:
            raise ValueError(f"recent must be a 2-d array of song keys, got shape {recent.shape}")
        if exponent < 0:
            raise ValueError("exponent must be >= 0")
        n, users = len(self.songs), len(recent)
        rows = self.songs.lookup(recent)
        u, j = np.nonzero(rows >= 0)
        now = self._now()
        plays = np.maximum(self._plays[:n] * now, 1e-300)
        weight = plays[rows[u, j]] ** -exponent if both_sides else np.ones(len(u))
        levels = [level for level in (self._main, self._frozen, self._delta, self._fresh) if level.nnz]
        if len(levels) > 1:
            # one product over the levels stacked, each cut to the rows the query reaches: the levels
            # are summed in the product's accumulator, where a sum of products would sort them all
            reached, slot = np.unique(rows[u, j], return_inverse=True)
            stacked = sp.vstack([level[reached] for level in levels], format="csr")
            shift = len(reached) * np.arange(len(levels))
            q = sp.csr_matrix((np.repeat(weight * now, len(levels)),
                               (np.repeat(u, len(levels)), (slot[:, None] + shift).ravel())),
                              shape=(users, stacked.shape[0]))
            votes = q @ stacked
        else:
            q = sp.csr_matrix((weight * now, (u, rows[u, j])), shape=(users, n))
            votes = q @ (levels[0] if levels else self._main)
        # csr -> csc -> csr leaves each row's columns in order in two linear passes; sort_indices
        # compares, which took twice as long on the rows of a batch
        votes = votes.tocsc().tocsr()
        cols = votes.indices.astype(np.int64)
        # the power per song when songs are fewer than the entries reaching them, else per entry
        scale = (plays ** -exponent)[cols] if n < len(cols) else plays[cols] ** -exponent
        return CoocQuery(votes.indptr.astype(np.int64), cols, votes.data, votes.data * scale, self.songs, n)


_PADDED_ROWS_UP_TO = 512  # entries; measured crossover of a padded partition against one row at a time


def _top_per_row(indptr: np.ndarray, values: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """Boolean per entry: among its row's entries, one of the ``n`` (per row, or for all) largest
    finite values (ties: lower column first, as entries are in column order), so a row's answer
    never depends on the other rows of the call."""
    lengths = np.diff(indptr)
    wanted = np.broadcast_to(np.asarray(n, np.int64), lengths.shape)
    finite = np.isfinite(values)
    counted = np.r_[0, np.cumsum(finite, dtype=np.int32 if len(values) < 1 << 31 else np.int64)]
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    # rows with no more finite values than wanted keep them all; only the others need an order
    short = (counted[indptr[1:]] - counted[indptr[:-1]]) <= wanted
    chosen = finite & short[row_of] & (wanted[row_of] > 0)
    to_order = np.flatnonzero(~short & (wanted > 0))
    if not len(to_order):
        return chosen
    # short rows of similar length go through one padded array each (at most 2x padding); a long row
    # costs less on its own than padded, and a loop over few rows costs little
    dense_rows = to_order[lengths[to_order] <= _PADDED_ROWS_UP_TO]
    for row in to_order[lengths[to_order] > _PADDED_ROWS_UP_TO].tolist():
        a, b, take = int(indptr[row]), int(indptr[row + 1]), int(wanted[row])
        vals = values[a:b]
        threshold = np.partition(vals, len(vals) - take)[len(vals) - take]
        above = vals > threshold
        tied = vals == threshold
        places = take - np.count_nonzero(above)
        if np.count_nonzero(tied) > places:  # the tied values usually fit: counted along the row when not
            tied &= np.cumsum(tied) <= places
        chosen[a:b] = above | tied
    if not len(dense_rows):
        return chosen
    bucket = np.ceil(np.log2(lengths[dense_rows])).astype(np.int64)
    for b in np.unique(bucket):
        rows = dense_rows[bucket == b]
        width = int(lengths[rows].max())
        entry = indptr[rows][:, None] + np.arange(width)
        inside = np.arange(width) < lengths[rows][:, None]
        dense = np.where(inside, values[np.where(inside, entry, 0)], -np.inf)
        dense = np.where(np.isfinite(dense), dense, -np.inf)
        take = wanted[rows]
        most = int(take.max())  # partition to the widest ask, sort only that head
        head = -np.sort(np.partition(-dense, most - 1, axis=1)[:, :most], axis=1)
        threshold = head[np.arange(len(rows)), take - 1]
        above = dense > threshold[:, None]
        tied = dense == threshold[:, None]
        places = take - above.sum(axis=1)
        keep = above | tied
        crowded = np.flatnonzero(tied.sum(axis=1) > places)  # the tied values usually fit: count along those rows only
        if len(crowded):
            keep[crowded] = above[crowded] | (tied[crowded] & (np.cumsum(tied[crowded], axis=1)
                                                               <= places[crowded][:, None]))
        chosen[entry[keep & inside]] = True
    return chosen
