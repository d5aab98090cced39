"""Data-parallel training's split of the work (online_models.sharding): each process samples a
disjoint share, together they cover everything once, and every process runs the same step count."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.config import OnlineConfig
from online_models.interactions import Interactions
from online_models.ncf_config import NCFConfig
from online_models.ncf_train import shard_pairs, split_pairs
from online_models.sasrec import build_sequences
from online_models.sasrec_train import _shard_windows, _windows
from online_models.sharding import Shard, owners, pad_to
from tests.synthetic import synthetic_log


def _shard(rank: int, world: int) -> Shard:
    return Shard(rank, world, lambda m: m, lambda n: n, lambda x: x)


def test_owners_split_users_into_shards_of_equal_weight() -> None:
    weights = np.random.default_rng(0).integers(1, 50, 1000)
    owner = owners(weights, 3, np.random.default_rng(1))
    assert set(owner.tolist()) == {0, 1, 2}
    load = np.bincount(owner, weights=weights)
    assert load.max() - load.min() <= 2 * weights.max()  # cut points move by at most one user each
    np.testing.assert_array_equal(owner, owners(weights, 3, np.random.default_rng(1)))  # alike in every process


def test_pad_to_cycles_rows_and_refuses_an_empty_shard() -> None:
    a, b = pad_to(5, np.array([1, 2]), np.array([3.0, 4.0]))
    assert a.tolist() == [1, 2, 1, 2, 1] and b.tolist() == [3.0, 4.0, 3.0, 4.0, 3.0]
    with pytest.raises(ValueError, match="no training rows"):
        pad_to(3, np.array([], np.int64))


def test_a_shard_needs_a_rank_inside_its_world() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        _shard(2, 2)
    assert _shard(0, 2).batch_size(512) == 256 and _shard(0, 3).batch_size(512) == 171


def test_neumf_shards_keep_each_user_whole_and_cover_every_pair_once() -> None:
    events = synthetic_log(n_users=60, n_songs=200, n_events=4000)
    rows = Interactions.from_events(events, OnlineConfig())
    split = split_pairs(rows, NCFConfig(val_users=10), np.random.default_rng(0))
    parts = [shard_pairs(split, r, 3, np.random.default_rng(7)) for r in range(3)]
    pos = np.concatenate([np.stack(p[:2], 1) for p in parts])
    skip = np.concatenate([np.stack(p[2:], 1) for p in parts])
    assert sorted(map(tuple, pos.tolist())) == sorted(zip(split.pos_u.tolist(), split.pos_i.tolist(), strict=True))
    assert sorted(map(tuple, skip.tolist())) == sorted(zip(split.skip_u.tolist(), split.skip_i.tolist(),
                                                          strict=True))
    assert len(skip) > 0
    users = [set(p[0].tolist()) | set(p[2].tolist()) for p in parts]
    assert all(users[i].isdisjoint(users[j]) for i in range(3) for j in range(i + 1, 3))


def test_sasrec_shards_cover_every_window_and_are_the_same_size() -> None:
    seqs = build_sequences(synthetic_log(n_users=30, n_songs=80, n_events=1500), "keep")
    windows = _windows(seqs, 10)
    parts = [_shard_windows(windows, np.random.default_rng(3), _shard(r, 4)) for r in range(4)]
    assert len({len(p.inputs) for p in parts}) == 1
    assert len(parts[0].inputs) == -(-len(windows.inputs) // 4)
    seen = {tuple(row) for p in parts for row in p.inputs.tolist()}
    assert seen == {tuple(row) for row in windows.inputs.tolist()}
