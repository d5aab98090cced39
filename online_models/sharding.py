"""One process's part of a data-parallel training run: which rows it samples, and the collective
operations it needs, as plain callables. ``offline.ddp`` builds a :class:`Shard` over
torch.distributed (DistributedDataParallel); the training loops here never import it.

Every process holds the same weights (DDP averages the gradients of each step), so the
validation figures, and with them early stopping, come out equal in every process without a
message; only the sampling is split, and the step count is made equal by padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int
    wrap: Callable[[Any], Any]  # the backend's training module -> its data-parallel wrapper
    all_max: Callable[[int], int]  # the largest of one integer over every process
    all_mean: Callable[[float], float]  # the mean of one number over every process

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not within a world of {self.world} processes")

    def batch_size(self, global_batch: int) -> int:
        """Rows per process and step, so that one step of all processes is the single-process batch."""
        return -(-global_batch // self.world)


def owners(weights: np.ndarray, world: int, rng: np.random.Generator) -> np.ndarray:
    """The process of each of ``len(weights)`` users: contiguous runs of a seeded shuffle, cut where the
    running weight (e.g. positives) crosses each 1/world of the total, so the shards weigh about the same."""
    weights = np.asarray(weights, np.float64)
    order = rng.permutation(len(weights))
    before = np.cumsum(weights[order]) - weights[order]
    total = max(float(weights.sum()), 1e-12)
    out = np.empty(len(weights), np.int64)
    out[order] = np.minimum((before / total * world).astype(np.int64), world - 1)
    return out


def pad_to(n: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array cycled to length ``n`` (the longest shard's), as DistributedSampler pads: every
    process then runs the same number of steps, which DDP's collective gradient sums require."""
    if n and any(len(a) == 0 for a in arrays):
        raise ValueError("a process got no training rows: fewer users than processes (use fewer workers)")
    return tuple(np.resize(a, n) for a in arrays)
