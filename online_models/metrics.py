"""Ranking metrics against sampled negatives, shared by NCF early stopping and offline evaluation."""

from __future__ import annotations

import numpy as np


def sampled_hit_ndcg(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row HR@k and NDCG@k when column 0 holds the held-out item's score and the other columns
    the sampled negatives' scores.

    Ties are resolved as the expectation over a uniformly random order of the tied items: a row whose
    positive beats ``g`` negatives strictly and ties with ``t`` gets HR = P(g + U{0..t} < k) and the
    matching mean of 1/log2(rank + 2). So a scorer returning a constant (or -inf everywhere) scores
    exactly chance, k / n_candidates, rather than 1 (optimistic ties) or 0 (pessimistic ties).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be (users, 1 + negatives) with at least one negative, got {s.shape}")
    if not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos, neg = s[:, :1], s[:, 1:]
    above = (neg > pos).sum(axis=1)
    tied = (neg == pos).sum(axis=1)
    # cum[r] = sum of the NDCG gains of ranks 0..r-1, so any window of ranks is one subtraction
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    lo = np.minimum(above, k)
    hi = np.minimum(above + tied + 1, k)
    width = tied + 1.0
    hit = (hi - lo) / width
    ndcg = (cum[hi] - cum[lo]) / width
    return hit, ndcg
