"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a closed-form song-to-song model.

``B = argmin ||X - XB||² + l2·||B||²`` subject to ``diag(B) = 0`` has the closed form
``B = I - P / diag(P)`` with ``P = (XᵀX + l2·I)⁻¹``; a user's score for song j is ``x_u · B[:, j]``.
Unlike a factorisation it keeps every pair of songs, which is what full-catalogue recall rewards.

Two choices make it a model the worker can serve:

* ``B`` is pruned to each song's ``neighbours`` largest weights (by magnitude), stored sparse: a
  neighbour table like the co-occurrence one, megabytes instead of ``songs²`` floats. On Last.fm's
  12k artists, 200 neighbours score as well as the dense matrix (HR@10 0.648 vs 0.640).
* The user row ``x_u`` weighs each played song by its recency *in events*:
  ``2 ** (-later / half_life_events)``, ``later`` being how many of the user's plays came after the
  song's latest play. A half-life counted in plays follows each user's own pace, which days do not.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack


def ease_weights(plays: sp.spmatrix, l2: float, neighbours: int = 200) -> sp.csr_matrix:
    """The EASE song-to-song weights of a users x songs matrix, each row pruned to its ``neighbours``
    largest magnitudes; ``float32`` CSR (songs x songs).

    The Gram matrix is inverted by a float32 Cholesky (LAPACK potrf/potri): it is symmetric positive
    definite for ``l2 > 0``, and half the work and memory of a float64 LU. Time grows as songs³
    (~30 s for 12k songs on 2 cores), memory as songs² (600 MB at 12k songs)."""
    if not sp.issparse(plays) or plays.ndim != 2:
        raise ValueError("plays must be a 2-d scipy sparse matrix (users x songs)")
    if not l2 > 0:
        raise ValueError(f"l2 must be positive, got {l2!r}")
    if neighbours <= 0:
        raise ValueError(f"neighbours must be positive, got {neighbours!r}")
    x = sp.csr_matrix(plays, dtype=np.float32)
    n = x.shape[1]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    gram = np.asarray((x.T @ x).toarray(), dtype=np.float32)
    gram[np.diag_indices(n)] += np.float32(l2)
    chol, info = lapack.spotrf(gram, lower=1, overwrite_a=1, clean=1)
    if info != 0:
        raise ValueError(f"Cholesky of the regularised Gram matrix failed (LAPACK info {info})")
    inv, info = lapack.spotri(chol, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"inverting the regularised Gram matrix failed (LAPACK info {info})")
    _mirror_lower(inv)
    diag = inv.diagonal().copy()
    inv /= -diag[None, :]  # B[i, j] = -P[i, j] / P[j, j]
    inv[np.diag_indices(n)] = 0.0
    return _prune_rows(inv, neighbours)


def _mirror_lower(a: np.ndarray, step: int = 1024) -> None:
    """Copy the lower triangle of square ``a`` onto its upper one, in place (potri fills the lower
    one only), a block of rows at a time so no songs²-sized temporary is made."""
    n = len(a)
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = a[start:stop, start:stop]
        block[np.triu_indices(stop - start, 1)] = block.T[np.triu_indices(stop - start, 1)]
        a[start:stop, stop:] = a[stop:, start:stop].T


def _prune_rows(dense: np.ndarray, keep: int) -> sp.csr_matrix:
    """CSR holding each row's ``keep`` largest-magnitude entries (all of them when the row is shorter)."""
    n_rows, n_cols = dense.shape
    if keep >= n_cols:
        return sp.csr_matrix(dense)
    out = []
    step = max(1, (1 << 22) // max(1, n_cols))  # rows per chunk: the argpartition works on ~16 MB
    for start in range(0, n_rows, step):
        block = dense[start:start + step]
        cols = np.argpartition(-np.abs(block), keep - 1, axis=1)[:, :keep]
        rows = np.repeat(np.arange(len(block)), keep)
        out.append(sp.csr_matrix((np.take_along_axis(block, cols, axis=1).ravel(), (rows, cols.ravel())),
                                 shape=(len(block), n_cols), dtype=np.float32))
    pruned = sp.vstack(out, format="csr")
    pruned.eliminate_zeros()
    return pruned


def play_recency(user_rows: np.ndarray, song_cols: np.ndarray, ts: np.ndarray, shape: tuple[int, int],
                 half_life_events: float) -> sp.csr_matrix:
    """Users x songs weights of played songs: ``2 ** (-later / half_life_events)`` where ``later`` is
    the number of the user's plays strictly after the song's latest play (plays at the same ``ts``
    count as simultaneous, so a log with coarse timestamps gets no arbitrary order); 1 for every
    played song when ``half_life_events`` is 0. One entry per (user, song) play event given."""
    rows = np.asarray(user_rows, np.int64)
    cols = np.asarray(song_cols, np.int64)
    ts = np.asarray(ts, np.float64)
    if not rows.shape == cols.shape == ts.shape or rows.ndim != 1:
        raise ValueError("user_rows, song_cols and ts must be 1-d arrays of one length")
    if half_life_events < 0:
        raise ValueError(f"half_life_events must be >= 0, got {half_life_events!r}")
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0] or cols.max() >= shape[1]):
        raise ValueError(f"user_rows and song_cols must index a {shape} matrix")
    if len(rows) == 0:
        return sp.csr_matrix(shape, dtype=np.float32)
    _, t_rank = np.unique(ts, return_inverse=True)
    width = int(t_rank.max()) + 1
    code = rows * width + t_rank  # (user, time) in one sortable integer
    ordered = np.sort(code)
    user_end = np.searchsorted(ordered, (rows + 1) * width, "left")
    later = user_end - np.searchsorted(ordered, code, "right")
    weight = np.exp2(-later / half_life_events) if half_life_events > 0 else np.ones(len(rows))
    # the latest play of each (user, song) is its largest weight
    order = np.lexsort((-weight, cols, rows))
    r, c, w = rows[order], cols[order], weight[order]
    first = np.r_[True, (r[1:] != r[:-1]) | (c[1:] != c[:-1])]
    return sp.csr_matrix((w[first].astype(np.float32), (r[first], c[first])), shape=shape)
