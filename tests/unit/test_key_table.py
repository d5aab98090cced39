"""The key -> row table behind song lookups (SongIndex.rows, the co-occurrence's KeyIndex): hashed for
large lookups, a binary search for small ones, the same rows either way."""

from __future__ import annotations

import numpy as np
import pytest

from index_manager.key_table import KeyTable
from online_models.keyindex import KeyIndex


def test_rows_follow_the_order_keys_were_added() -> None:
    table = KeyTable(np.array([50, 7, 1 << 62]))
    assert table.add(np.array([-3, 0])).tolist() == [3, 4]
    assert table.lookup(np.array([[7, 0], [99, 1 << 62]])).tolist() == [[1, 4], [-1, 2]]
    assert table.lookup(np.array([-3, -1, 50])).tolist() == [3, -1, 0]
    assert table.keys.tolist() == [50, 7, 1 << 62, -3, 0]


def test_an_empty_table_finds_nothing() -> None:
    assert KeyTable().lookup(np.array([[1, 2]])).tolist() == [[-1, -1]]
    assert KeyTable(np.array([5])).lookup(np.empty(0, np.int64)).shape == (0,)


def _sorted_search(added: np.ndarray, queries: np.ndarray) -> np.ndarray:
    order = np.argsort(added)
    pos = np.minimum(np.searchsorted(added[order], queries), len(added) - 1)
    return np.where(added[order][pos] == queries, order[pos], -1)


def test_same_rows_as_a_sorted_search_through_growth_and_collisions() -> None:
    rng = np.random.default_rng(3)
    table, added = KeyTable(), np.empty(0, np.int64)
    for size in (5, 60, 5000):  # each add grows the table past its load
        part = np.setdiff1d(rng.integers(-(1 << 62), 1 << 62, size), added)
        part = part[rng.permutation(len(part))]
        table.add(part)
        added = np.concatenate([added, part])
        queries = np.concatenate([rng.choice(added, 2000), rng.integers(0, 1 << 62, 500)])
        assert np.array_equal(table.lookup(queries), _sorted_search(added, queries))  # hashed
        assert np.array_equal(table.lookup(queries[::50]), _sorted_search(added, queries[::50]))  # searched
    # keys whose home slot is already taken, added in one call: they chain behind each other
    homes = table._home(added)
    candidates = np.setdiff1d(rng.integers(0, 1 << 62, 400_000), added)
    crowded = candidates[np.isin(table._home(candidates), homes[:20])][:40]
    assert len(crowded) >= 20
    table.add(crowded)
    added = np.concatenate([added, crowded])
    assert len(np.unique(table._home(added))) < len(added) - 20
    queries = np.concatenate([added, candidates[:3000]])
    assert np.array_equal(table.lookup(queries), _sorted_search(added, queries))


def test_keys_added_twice_are_refused() -> None:
    table = KeyTable(np.array([1, 2]))
    with pytest.raises(ValueError, match="distinct and new"):
        table.add(np.array([2, 3]))
    with pytest.raises(ValueError, match="distinct and new"):
        table.add(np.array([4, 4]))
    with pytest.raises(ValueError, match="1-d"):
        table.add(np.array([[5]]))
    assert table.lookup(np.array([3, 4])).tolist() == [-1, -1]


def test_key_index_hands_out_rows_in_order_of_first_appearance() -> None:
    index = KeyIndex()
    assert index.add(np.array([30, 10, 30, 20])).tolist() == [0, 1, 0, 2]
    assert index.add(np.array([40, 10, 5, 40])).tolist() == [3, 1, 4, 3]
    assert index.keys.tolist() == [30, 10, 20, 40, 5]
    assert index.lookup(np.array([[5, 6]])).tolist() == [[4, -1]]
    assert len(index) == 5
