"""Intervals for the ratio of two models' figures measured on the same plays or users."""

from __future__ import annotations

import numpy as np


def ratio_interval(hits: np.ndarray, reference: np.ndarray, blocks: int, draws: int = 2000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """An interval for ``sum(hits) / sum(reference)``, two models' hits on the same scored plays (or
    held-out users), by a paired block bootstrap: the plays are cut, in order, into ``blocks`` stretches
    (plays of one batch or one listening session are not independent; independent users may each be
    a block), and stretches are drawn with replacement, the same ones for both models. None when the
    reference never hits. Deterministic for a given ``seed``."""
    a, b = np.asarray(hits, np.float64), np.asarray(reference, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"hits and reference must be 1-d arrays of one length, got {a.shape} and {b.shape}")
    if not 2 <= blocks <= len(a) or draws < 1 or not 0 < level < 1:
        raise ValueError(f"need 2 <= blocks <= {len(a)} plays, draws >= 1 and 0 < level < 1")
    starts = np.linspace(0, len(a), blocks + 1).astype(np.int64)[:-1]
    per_a, per_b = np.add.reduceat(a, starts), np.add.reduceat(b, starts)
    drawn = np.random.default_rng(seed).integers(0, blocks, size=(draws, blocks))
    num, den = per_a[drawn].sum(axis=1), per_b[drawn].sum(axis=1)
    if not (den > 0).any():
        return None
    lo, hi = np.quantile(num[den > 0] / den[den > 0], [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
