"""Next-song signals and the learned ranker: known answers on tiny streams (no services)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from index_manager.keys import song_keys
from online_models.batch import EventBatch
from online_models.blend import Ranker
from online_models.cooc import CoOccurrence
from online_models.keyindex import KeyIndex
from online_models.popularity import PopularityLadder
from online_models.sequences import PAD, RecentPlays


def test_key_index_hands_out_rows_in_order_of_first_appearance() -> None:
    idx = KeyIndex()
    assert idx.add(np.array([30, 10, 30])).tolist() == [0, 1, 0]
    assert idx.add(np.array([20, 10])).tolist() == [2, 1]
    assert idx.lookup(np.array([[10, 99], [20, 30]])).tolist() == [[1, -1], [2, 0]]
    assert idx.keys.tolist() == [30, 10, 20]


def test_recent_plays_pairs_span_batches_and_respect_the_window() -> None:
    recent = RecentPlays(length=3)
    first = recent.update(np.array(["u", "v", "u"], dtype=object), np.array([1, 7, 2]), window=2)
    assert sorted(zip(first.earlier.tolist(), first.later.tolist(), first.distance.tolist(), strict=True)) == \
        [(1, 2, 1)]
    second = recent.update(np.array(["u", "u"], dtype=object), np.array([3, 4]), window=2)
    got = sorted(zip(second.earlier.tolist(), second.later.tolist(), second.distance.tolist(),
                     second.event.tolist(), strict=True))
    # 3 follows 2 (d=1) and 1 (d=2); 4 follows 3 (d=1) and 2 (d=2); 1 is beyond the window of 4
    assert got == [(1, 3, 2, 0), (2, 3, 1, 0), (2, 4, 2, 1), (3, 4, 1, 1)]
    assert recent.gather(np.array(["u", "v", "w"], dtype=object)).tolist() == \
        [[2, 3, 4], [PAD, PAD, 7], [PAD, PAD, PAD]]
    assert recent.counts(np.array(["u", "w"], dtype=object)).tolist() == [3, 0]
    with pytest.raises(ValueError):
        recent.update(np.array(["u"], dtype=object), np.array([1]), window=4)


def _learn(cooc: CoOccurrence, recent: RecentPlays, users: list[str], keys: list[int], window: int = 5) -> None:
    u, k = np.array(users, dtype=object), np.array(keys, np.int64)
    pairs = recent.update(u, k, window)
    pos = np.arange(len(k), dtype=np.float64)
    cooc.learn(pairs.earlier, pairs.later, np.ones(len(pairs.earlier)), pos[pairs.event], k, pos, len(k))


def test_cooccurrence_counts_votes_both_ways_and_normalises_by_plays() -> None:
    cooc, recent = CoOccurrence(), RecentPlays(10)
    _learn(cooc, recent, ["a", "a", "b", "b", "b"], [1, 2, 1, 2, 3])
    q = cooc.query(np.array([[PAD, 1], [PAD, 3]]), exponent=0.5)
    votes, norm = q.at(np.array([[2, 3, 1, 9], [1, 2, 3, 9]]))
    # song 1 and 2 were played together by a and by b; 3 once with each of them (by b)
    assert votes.tolist() == [[2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    # plays: 1 -> 2, 2 -> 2, 3 -> 1: normalised votes divide by the candidate's sqrt(plays)
    np.testing.assert_allclose(norm, [[2 / np.sqrt(2), 1.0, 0, 0], [1 / np.sqrt(2), 1 / np.sqrt(2), 0, 0]])
    assert cooc.plays(np.array([1, 3, 9])).tolist() == [2.0, 1.0, 0.0]


@pytest.mark.parametrize("fill", [0, 10**9])  # every query looked up by binary search / in dense rows
def test_cooccurrence_lookups_agree_sparse_or_dense(fill: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    cooc, recent = CoOccurrence(), RecentPlays(10)
    _learn(cooc, recent, [f"u{u}" for u in rng.integers(0, 8, 300)], rng.integers(1, 40, 300).tolist())
    history = np.where(rng.random((6, 5)) < 0.2, PAD, rng.integers(1, 40, (6, 5)))
    q = cooc.query(history, exponent=0.5)
    keys = rng.integers(-1, 45, (6, 30))
    rows = np.repeat(np.arange(6), np.diff(q.indptr))
    want = {(r, int(q.songs.keys[c])): (v, n) for r, c, v, n in zip(rows, q.cols, q.votes, q.normalised, strict=True)}
    monkeypatch.setattr("online_models.cooc._DENSE_FILL", fill)
    votes, norm = q.at(keys)
    expected = np.array([[want.get((u, int(k)), (0.0, 0.0)) for k in row] for u, row in enumerate(keys)])
    assert (expected[..., 0] > 0).any() and (expected[..., 0] == 0).any()
    np.testing.assert_allclose(votes, expected[..., 0])
    np.testing.assert_allclose(norm, expected[..., 1])
    # top: half by normalised, half by raw votes, never a skipped song; ties go to the lower column
    skip = (np.array([0, 0, 3]), np.array([int(k) for k in q.songs.keys[:3]]))
    top = q.top(7, skip)
    for u in range(6):
        entries = [(c, v, n) for r, c, v, n in zip(rows, q.cols, q.votes, q.normalised, strict=True)
                   if r == u and v > 0 and (u, int(q.songs.keys[c])) not in set(zip(*skip, strict=True))]
        best = {c for c, _, _ in sorted(entries, key=lambda e: (-e[2], e[0]))[:4]} | \
            {c for c, _, _ in sorted(entries, key=lambda e: (-e[1], e[0]))[:3]}
        assert top[u][top[u] >= 0].tolist() == [int(q.songs.keys[c]) for c in sorted(best)]


def test_cooccurrence_decays_in_events_and_prunes_to_the_strongest_neighbours() -> None:
    cooc, recent = CoOccurrence(half_life_events=4.0, max_neighbours=1), RecentPlays(10)
    _learn(cooc, recent, ["a", "a"], [1, 2])
    cooc.learn(*(np.empty(0),) * 4, np.empty(0, np.int64), np.empty(0), n_events=4)  # four events elsewhere
    votes, _ = cooc.query(np.array([[1]])).at(np.array([[2]]))
    # the vote was cast at event 1 of 2, and 5 events have passed since: 2^(-5/4)
    np.testing.assert_allclose(votes, [[2 ** (-5 / 4)]])
    many = CoOccurrence(max_neighbours=1)
    _learn(many, RecentPlays(10), ["a"] * 3 + ["b"] * 2, [1, 2, 3, 1, 2])
    many._merge()
    votes, _ = many.query(np.array([[1]])).at(np.array([[2, 3]]))
    assert votes.tolist() == [[2.0, 0.0]]  # 1's only kept neighbour is its strongest


class _InlineExecutor:
    """Runs a merge at once, optionally after a delay: where the helper thread is instant or slow."""

    def __init__(self, delay: float = 0.0, **_: object) -> None:
        self.delay = delay

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        done: Future[Any] = Future()
        if self.delay:
            threading.Timer(self.delay, lambda: done.set_result(fn(*args))).start()
        else:
            done.set_result(fn(*args))
        return done


def _stream_queries(cooc: CoOccurrence, seed: int = 5) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """Learn 60 batches of 50 random plays; after each, every user's votes. Returns them and how
    many main merges started."""
    rng, recent, started = np.random.default_rng(seed), RecentPlays(10), [0]
    start = cooc._start_merge

    def counted(n_events: int) -> None:
        started[0] += 1
        start(n_events)

    cooc._start_merge = counted  # type: ignore[method-assign]
    everyone = np.array([f"u{u}" for u in range(30)], dtype=object)
    out = []
    for _ in range(60):
        _learn(cooc, recent, [f"u{u}" for u in rng.integers(0, 30, 50)], rng.integers(0, 400, 50).tolist())
        q = cooc.query(recent.gather(everyone))
        out.append((q.indptr.copy(), q.cols.copy(), q.votes.copy()))
    return out, started[0]


@pytest.fixture
def small_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("online_models.cooc._FRESH_MIN", 16)
    monkeypatch.setattr("online_models.cooc._DELTA_MIN", 64)
    monkeypatch.setattr("online_models.cooc._REBASE_EXPONENT", 20.0)  # rebases while merges run


def test_a_main_merge_lands_at_a_fixed_event_however_long_its_thread_takes(
        small_levels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("online_models.cooc.MERGE_LAG_EVENTS", 120)  # ~3 batches with the merge in flight
    threaded, started = _stream_queries(CoOccurrence(half_life_events=3.0, max_neighbours=4))
    assert started >= 3
    for delay in (0.0, 0.02):
        monkeypatch.setattr("online_models.cooc.ThreadPoolExecutor", lambda delay=delay, **kw: _InlineExecutor(delay))
        other, _ = _stream_queries(CoOccurrence(half_life_events=3.0, max_neighbours=4))
        for a, b in zip(threaded, other, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_queries_see_every_vote_while_a_main_merge_is_in_flight(
        small_levels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # no pruning: every query must equal the one of a merge that lands before the next batch,
    # through the rebases that happen while the merge is in flight
    monkeypatch.setattr("online_models.cooc.MERGE_LAG_EVENTS", 0)
    at_once, _ = _stream_queries(CoOccurrence(half_life_events=3.0, max_neighbours=1000))
    monkeypatch.setattr("online_models.cooc.MERGE_LAG_EVENTS", 500)
    monkeypatch.setattr("online_models.cooc.ThreadPoolExecutor", lambda **kw: _InlineExecutor(0.05))
    later, started = _stream_queries(CoOccurrence(half_life_events=3.0, max_neighbours=1000))
    assert started >= 3
    for (indptr, cols, votes), (indptr2, cols2, votes2) in zip(at_once, later, strict=True):
        assert np.array_equal(indptr, indptr2) and np.array_equal(cols, cols2)
        np.testing.assert_allclose(votes2, votes, rtol=1e-9)


def test_a_failed_main_merge_raises_where_it_lands_and_keeps_every_vote(
        small_levels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(_InlineExecutor):
        def submit(self, fn: Any, *args: Any) -> Future[Any]:
            done: Future[Any] = Future()
            done.set_exception(MemoryError("no room for the merge"))
            return done

    monkeypatch.setattr("online_models.cooc.MERGE_LAG_EVENTS", 0)
    ok, failing = CoOccurrence(max_neighbours=1000), CoOccurrence(max_neighbours=1000)  # no pruning
    ok._executor, failing._executor = _InlineExecutor(), Failing()  # type: ignore[assignment]
    recent, rng, failed = RecentPlays(10), np.random.default_rng(2), 0
    for _ in range(60):
        users = np.array([f"u{u}" for u in rng.integers(0, 30, 50)], dtype=object)
        keys = rng.integers(0, 400, 50)
        pairs = recent.update(users, keys, 5)
        pos = np.arange(len(keys), dtype=np.float64)
        batch = (pairs.earlier, pairs.later, np.ones(len(pairs.earlier)), pos[pairs.event], keys, pos, len(keys))
        ok.learn(*batch)
        try:
            failing.learn(*batch)
        except MemoryError:  # raised before the batch was learnt: it comes again, as Kafka redelivers it
            failed += 1
            failing._executor = _InlineExecutor()  # type: ignore[assignment]
            failing.learn(*batch)
    assert failed == 1
    everyone = recent.gather(np.array([f"u{u}" for u in range(30)], dtype=object))
    want, got = ok.query(everyone), failing.query(everyone)
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.cols, want.cols)
    np.testing.assert_allclose(got.votes, want.votes)


def test_pruning_keeps_each_long_rows_largest_votes_with_ties_to_lower_columns() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(11)
    n, keep = 60, 5
    dense = np.where(rng.random((n, n)) < rng.uniform(0.02, 0.9, (n, 1)),  # rows of 1 to ~54 votes
                     rng.integers(-2, 4, (n, n)).astype(float), 0.0)  # few values: many ties
    m = sp.csr_matrix(dense)
    pruned = CoOccurrence(max_neighbours=keep)._prune(m).toarray()
    for row in range(n):
        cols = np.flatnonzero(dense[row])
        if len(cols) <= keep + keep // 2:  # short rows are left whole
            assert np.array_equal(pruned[row], dense[row])
            continue
        best = cols[np.lexsort((cols, -dense[row, cols]))[:keep]]
        assert sorted(np.flatnonzero(pruned[row]).tolist()) == sorted(best.tolist())
        assert np.array_equal(pruned[row, best], dense[row, best])


def test_cooccurrence_top_is_the_same_asked_alone_or_in_a_batch() -> None:
    rng = np.random.default_rng(3)
    cooc, recent = CoOccurrence(), RecentPlays(20)
    users = rng.integers(0, 30, 2000).astype(str).astype(object)
    _learn(cooc, recent, list(users), list(rng.integers(0, 60, 2000)), window=10)
    queries = recent.gather(np.array([str(u) for u in range(30)], dtype=object))
    together = cooc.query(queries).top(12)
    alone = np.vstack([cooc.query(queries[i:i + 1]).top(12) for i in range(len(queries))])
    assert np.array_equal(together, alone)
    assert (together[:, 0] >= 0).all()


def test_skip_votes_are_negative() -> None:
    cooc = CoOccurrence()
    cooc.learn(np.array([1, 1]), np.array([2, 3]), np.array([1.0, -1.0]), np.array([0.0, 1.0]),
               np.array([1, 2]), np.array([0.0, 0.0]), 2)
    votes, _ = cooc.query(np.array([[1]])).at(np.array([[2, 3]]))
    assert votes.tolist() == [[1.0, -1.0]]


def _plays(songs: list[str]) -> EventBatch:
    n = len(songs)
    return EventBatch.from_columns(["u"] * n, songs, ts=np.arange(n, dtype=float))


def test_popularity_top_breaks_ties_by_key_also_at_the_last_place() -> None:
    ladder = PopularityLadder((0.0,))
    songs = [f"s{i}" for i in range(40)]
    ladder.update(_plays(["hit"] * 3 + songs))  # one song ahead, forty tied behind it
    by_key = sorted(song_keys(songs).tolist())
    assert ladder.top(6, 0).tolist() == [*song_keys(["hit"]).tolist(), *by_key[:5]]
    longer = PopularityLadder((0.0,))
    longer.update(_plays(["hit"] * 3 + songs))
    longer.top(30, 0)  # cached: a shorter ask takes its head
    assert longer.top(6, 0).tolist() == ladder.top(6, 0).tolist()


def test_popularity_ladder_decays_each_rung_and_picks_the_memory_that_predicts() -> None:
    ladder = PopularityLadder((2.0, 0.0))
    ladder.update(_plays(["a", "b"]))
    np.testing.assert_allclose(ladder.scores(song_keys(["a", "b"])), [[2 ** -0.5, 1.0], [1.0, 1.0]])
    # a stream whose taste flips: what was played lately predicts the next play, all-time counts do not
    ladder = PopularityLadder((4.0, 0.0))
    ladder.update(_plays(["old"] * 50))
    for _ in range(20):
        ladder.observe(song_keys(["new"]), np.array([1]))
        ladder.update(_plays(["new"] * 3))
    assert ladder.best == 0
    assert ladder.hits[0] > ladder.hits[1]


def test_ranker_learns_which_signal_predicts_the_choice() -> None:
    rng = np.random.default_rng(0)
    ranker = Ranker(2, hidden=4, initial=np.array([1.0, 0.0]), learning_rate=0.1)
    users, cands = 64, 20
    sizes = np.full(users, 50)
    for _ in range(60):
        f = rng.normal(size=(users, cands, 2))
        chosen = np.argmax(f[..., 1], axis=1)  # the second signal decides, the first is noise
        ranker.learn(f, np.ones((users, cands), bool), chosen, sizes)
    f = rng.normal(size=(users, cands, 2))
    hit = np.argmax(ranker.score(f, sizes), axis=1) == np.argmax(f[..., 1], axis=1)
    assert hit.mean() > 0.9
    assert ranker.lessons == 60 * users


def test_ranker_ignores_plays_outside_the_candidates_and_checks_shapes() -> None:
    ranker = Ranker(3, initial=np.array([1.0, 0.0, 0.0]))
    before = ranker.linear.copy()
    f = np.ones((2, 4, 3))
    allowed = np.array([[True, True, False, True], [True] * 4])
    assert ranker.learn(f, allowed, np.array([-1, -1]), np.array([0, 5])) == 0
    assert ranker.learn(f, allowed, np.array([2, -1]), np.array([0, 5])) == 0  # chosen was filtered
    assert np.array_equal(ranker.linear, before)
    with pytest.raises(ValueError):
        ranker.score(np.ones((2, 4, 2)), np.array([0, 5]))
    with pytest.raises(ValueError):
        Ranker(3, buckets=(5, 2))


def test_top_per_row_matches_a_plain_sort_on_short_and_long_rows_with_ties() -> None:
    from online_models.cooc import _top_per_row

    rng = np.random.default_rng(3)
    lengths = np.array([0, 3, 40, 700, 5, 1200, 64])  # padded and one-at-a-time rows both
    indptr = np.r_[0, np.cumsum(lengths)]
    values = rng.integers(-1, 6, indptr[-1]).astype(float)  # many ties
    values[values < 0] = -np.inf
    wanted = np.array([2, 5, 7, 30, 0, 11, 64])
    chosen = _top_per_row(indptr, values, wanted)
    for row, take in enumerate(wanted.tolist()):
        a, b = indptr[row], indptr[row + 1]
        finite = [i for i in range(a, b) if np.isfinite(values[i])]
        expected = sorted(finite, key=lambda i: (-values[i], i))[:take]
        assert sorted(np.flatnonzero(chosen[a:b]) + a) == sorted(expected), row


@pytest.mark.parametrize("fill", [4, 10**9])  # the sparse rows as they come, then every query dense
def test_cooccurrence_top_matches_a_plain_sort_without_the_heard_songs(fill: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from online_models.cooc import CoocQuery

    monkeypatch.setattr("online_models.cooc._DENSE_FILL", fill)
    rng = np.random.default_rng(5)
    songs = KeyIndex()
    keys = rng.choice(10**9, 900, replace=False).astype(np.int64)
    songs.add(keys)
    lengths = np.array([0, 4, 30, 700, 900, 12])  # long rows go one at a time when sparse
    cols = np.concatenate([np.sort(rng.choice(900, n, replace=False)) for n in lengths]).astype(np.int64)
    indptr = np.r_[0, np.cumsum(lengths)]
    votes = rng.integers(-1, 5, len(cols)).astype(float)  # many ties; non-positive votes never proposed
    normalised = votes / rng.integers(1, 3, len(cols))
    # heard: each row's three best-voted songs (they would lead its list), and songs at random
    best_voted = [cols[a + np.argsort(-votes[a:b], kind="stable")[:3]] for a, b in itertools.pairwise(indptr)]
    heard_rows = np.r_[np.repeat(np.arange(len(lengths)), [len(b) for b in best_voted]), rng.integers(0, 6, 300)]
    heard_keys = keys[np.r_[np.concatenate(best_voted), rng.integers(0, 900, 300)]]
    top = CoocQuery(indptr, cols, votes, normalised, songs, 900).top(9, (heard_rows, heard_keys))
    for row in range(len(lengths)):
        entries = [e for e in range(indptr[row], indptr[row + 1]) if votes[e] > 0
                   and keys[cols[e]] not in set(heard_keys[heard_rows == row].tolist())]
        best = {*sorted(entries, key=lambda e: (-normalised[e], cols[e]))[:5],
                *sorted(entries, key=lambda e: (-votes[e], cols[e]))[:4]}
        expected = keys[np.sort(cols[sorted(best)])].tolist()  # in column order, -1 after
        assert top[row].tolist() == expected + [-1] * (9 - len(expected)), row


def test_heard_signals_say_how_long_ago_and_how_much_each_user_played_a_candidate() -> None:
    from online_models.features import _heard_signals
    from online_models.history import UserRows

    # user 0 played 5, 7, 5 (5 last), skipped 9; user 1 played 7; song 3 is new to both
    recent = np.array([[PAD, 5, 7, 5], [PAD, PAD, PAD, 7]])
    rows = UserRows(np.array([0, 0, 0, 1]), np.array([5, 7, 9, 7]), np.array([2.0, 1.0, 0.0, 1.0]),
                    np.array([0.0, 0.0, 1.0, 0.0]), np.zeros(4))
    keys = np.array([[5, 7, 9, 3], [7, 5, 3, 9]])
    none = (np.empty(0, np.int64), np.empty(0, np.int64))
    out = _heard_signals(keys, rows, none, recent)
    assert out[..., 0].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    # a song trimmed from user 1's rows is still heard, with nothing else known of it
    trimmed = _heard_signals(keys, rows, (np.array([1]), np.array([3])), recent)
    assert trimmed[1, 2].tolist() == [1.0, -np.float32(np.log(5)), 0.0, 0.0]
    # plays ago: 5 is the latest (1), 7 two plays ago; 9 only skipped: past the window of 4 (5)
    np.testing.assert_allclose(out[..., 1], [[0.0, -np.log(2), -np.log(5), 0.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(out[..., 2], np.log1p([[2, 1, 0, 0], [1, 0, 0, 0]]), atol=1e-6)
    np.testing.assert_allclose(out[..., 3], np.log1p([[0, 0, 1, 0], [0, 0, 0, 0]]), atol=1e-6)
    alone = _heard_signals(keys[1:], UserRows(np.array([0]), np.array([7]), np.array([1.0]), np.zeros(1),
                                              np.zeros(1)), none, recent[1:])
    np.testing.assert_array_equal(alone, out[1:])


def test_popularity_log_relative_is_the_same_by_table_or_direct() -> None:
    ladder = PopularityLadder((2.0, 0.0))
    rng = np.random.default_rng(5)
    songs = np.array([f"s{i}" for i in rng.integers(0, 30, 200)], dtype=object)
    ladder.update(EventBatch.from_columns(np.full(200, "u", dtype=object), songs, None, np.arange(200.0), None,
                                          np.array([f"e{i}" for i in range(200)], dtype=object)))
    keys = song_keys([f"s{i}" for i in range(35)])  # five never played
    few = ladder.log_relative(keys[25:], 1e-6)  # fewer keys than songs, some unknown: computed directly
    many = ladder.log_relative(np.tile(keys, 3), 1e-6)[:35]  # more: from the per-song table
    np.testing.assert_allclose(few, many[25:], rtol=1e-6)
    counts = ladder.scores(keys)
    np.testing.assert_allclose(many, np.log(counts / counts.max(axis=0) + 1e-6), rtol=1e-5)
    assert np.allclose(many[30:], np.log(1e-6))


def test_popularity_maxima_follow_the_counts_through_rebases() -> None:
    # a half-life of 0.5 events rebases the stored values every ~200 events: the running peak must
    # be rescaled with them
    ladder = PopularityLadder((0.5, 50.0, 0.0))
    rng = np.random.default_rng(11)
    for start in range(0, 3000, 150):
        n = 150
        songs = np.array([f"s{i}" for i in rng.zipf(1.5, n) % 40], dtype=object)
        ladder.update(EventBatch.from_columns(np.full(n, "u", dtype=object), songs, None,
                                              np.arange(start, start + n, dtype=np.float64), None,
                                              np.array([f"e{start + i}" for i in range(n)], dtype=object)))
        every = ladder.scores(song_keys([f"s{i}" for i in range(40)]))
        np.testing.assert_allclose(ladder.maxima(), np.maximum(every.max(axis=0), 1e-300), rtol=1e-9)
