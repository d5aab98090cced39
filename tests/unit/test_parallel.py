"""Serving a request's users in parts on threads: same lists, same lessons, every part waited for."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from online_models.base import RecList
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.features import Pool
from online_models.online import OnlineALS
from online_models.parallel import Parts
from tests.synthetic import synthetic_log


def test_split_keeps_small_requests_whole_and_the_users_in_order() -> None:
    parts = Parts(threads=3, min_part=4)
    users = np.arange(20)
    assert [len(p) for p in parts.split(users[:7])] == [7]
    assert [len(p) for p in parts.split(users[:8])] == [4, 4]
    split = parts.split(users)
    assert len(split) == 3 and np.array_equal(np.concatenate(split), users)
    assert len(Parts(threads=1, min_part=1).split(users)) == 1
    with pytest.raises(ValueError):
        Parts(threads=0)


def test_map_runs_the_parts_at_once_and_returns_them_in_order() -> None:
    parts = Parts(threads=2, min_part=1)
    threads: set[str] = set()
    both = threading.Barrier(2, timeout=5)  # each part waits for the other: only threads get past it

    def part(users: np.ndarray) -> list[int]:
        threads.add(threading.current_thread().name)
        both.wait()
        return users.tolist()

    assert parts.map(part, np.arange(4)) == [[0, 1], [2, 3]]
    assert len(threads) == 2


def test_map_waits_for_every_part_when_one_fails() -> None:
    parts = Parts(threads=2, min_part=1)
    finished: list[int] = []

    def part(users: np.ndarray) -> None:
        if users[0] == 0:
            raise RuntimeError("first part failed")
        time.sleep(0.2)
        finished.append(int(users[0]))

    with pytest.raises(RuntimeError):
        parts.map(part, np.arange(4))
    assert finished == [2]  # the other part ended before map raised: nothing still reads the state


def test_concat_pads_pools_with_entries_nothing_reads() -> None:
    def pool(width: int, value: float) -> Pool:
        return Pool(np.full((2, width), 7), np.ones((2, width), bool), np.full((2, width, 3), value, np.float32),
                    np.array([1, 2]), np.array([0, 1]))

    both = Pool.concat([pool(3, 1.0), pool(5, 2.0)])
    assert both.keys.shape == both.allowed.shape == (4, 5) and both.features.shape == (4, 5, 3)
    assert (both.keys[:2, 3:] == -1).all() and not both.allowed[:2, 3:].any()
    assert (both.features[:2, :3] == 1.0).all() and (both.features[2:] == 2.0).all()
    assert both.sizes.tolist() == [1, 2, 1, 2]
    lists = RecList.concat([RecList.empty(1, 3, "v"), RecList.empty(2, 3, "v")])
    assert len(lists) == 3 and lists.version == "v"
    with pytest.raises(ValueError):
        RecList.concat([RecList.empty(1, 3, "v"), RecList.empty(1, 3, "w")])


def _replayed(threads: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A model served in parts of at least 8 users and taught by the next batch, as a worker does."""
    log = synthetic_log(n_users=200, n_events=6000).sorted_by_time()
    model = OnlineALS(OnlineConfig(factors=8, iterations=8), parts=Parts(threads, min_part=8))
    model.fit(log.take(slice(0, 3000)))
    lists = []
    rest: EventBatch = log.take(slice(3000, None))
    for start in range(0, len(rest), 500):
        touched = model.partial_fit(rest.take(slice(start, start + 500)))
        assert len(touched) >= 16  # so the threaded model does split
        lists.append(model.serve(touched, 10).recs.song_ids)
    return lists, model.state.ranker.linear.copy()


def test_lists_and_lessons_do_not_depend_on_the_threads() -> None:
    one, ranker_one = _replayed(1)
    three, ranker_three = _replayed(3)
    assert all(np.array_equal(a, b) for a, b in zip(one, three, strict=True))
    # the pools kept for lessons are the same; a part's pool is narrower than the whole request's,
    # and a product over a narrower row may round its last bit differently (float32 signals)
    np.testing.assert_allclose(ranker_three, ranker_one, rtol=1e-5, atol=1e-8)
