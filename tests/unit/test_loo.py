"""Leave-last-out: the split rule, metrics with known answers, scorer batching, the JSON result."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from index_manager.keys import song_key
from offline.evaluate import evaluate_file
from offline.eventfile import read_event_file, write_event_file
from offline.loo import DEFAULT_MODELS, evaluate_loo, full_recall, loo_split, sample_negatives, sampled_metrics
from offline.scorers import MODELS, _top_columns, make_scorer
from online_models.batch import EventBatch
from online_models.metrics import sampled_hit_ndcg
from online_models.ncf_config import NCFConfig
from tests.clustered import clustered_log

QUICK_NCF = NCFConfig(epochs=2, val_users=40)
# same class as another (ncf-mlx: test_ncf compares the backends) or trained at its default size
# (sasrec: test_sasrec runs its scorer with a quick config)
NOT_FITTED_HERE = ("ncf-mlx", "sasrec", "sasrec-mlx")


def _gain(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


# --------------------------------------------------------------------------------- metrics

def test_sampled_metrics_known_answers() -> None:
    neg = np.arange(99, dtype=float)  # negatives score 0..98
    rows = np.stack([
        np.r_[1000.0, neg],   # above everything: rank 0
        np.r_[96.5, neg],     # below 97 and 98: rank 2
        np.r_[88.5, neg],     # below 89..98 (10 songs): rank 10, outside the top 10
        np.r_[-1.0, neg],     # last
    ])
    hit, ndcg = sampled_hit_ndcg(rows, 10)
    np.testing.assert_allclose(hit, [1, 1, 0, 0])
    np.testing.assert_allclose(ndcg, [1.0, 0.5, 0, 0])
    assert sampled_metrics(rows, 10) == pytest.approx((0.5, 0.375))
    assert sampled_hit_ndcg(rows, 3)[0].tolist() == [1, 1, 0, 0]


def test_ties_count_as_a_random_order() -> None:
    # a constant scorer is exactly chance: HR@10 = 10/100
    hit, ndcg = sampled_hit_ndcg(np.zeros((2, 100)), 10)
    np.testing.assert_allclose(hit, 0.1)
    np.testing.assert_allclose(ndcg, sum(_gain(r) for r in range(10)) / 100)
    # 8 negatives above, 3 tied: ranks 8..11 equally likely, 2 of 4 inside the top 10
    row = np.r_[5.0, [9.0] * 8, [5.0] * 3, [1.0] * 88]
    hit, ndcg = sampled_hit_ndcg(row[None, :], 10)
    assert hit[0] == pytest.approx(0.5)
    assert ndcg[0] == pytest.approx((_gain(8) + _gain(9)) / 4)
    # -inf everywhere (an unknown song among unknown songs) is a tie too, not a miss
    hit, _ = sampled_hit_ndcg(np.full((1, 20), -np.inf), 5)
    assert hit[0] == pytest.approx(5 / 20)


def test_metric_inputs_are_validated() -> None:
    with pytest.raises(ValueError):
        sampled_hit_ndcg(np.zeros(5), 10)
    with pytest.raises(ValueError):
        sampled_hit_ndcg(np.array([[1.0, np.nan]]), 10)
    with pytest.raises(ValueError):
        sampled_hit_ndcg(np.zeros((1, 5)), 0)
    assert full_recall(np.array([["a", "b"], ["c", ""], ["d", "e"]], dtype=object),
                       np.array(["b", "x", "d"], dtype=object)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        full_recall(np.array(["a"], dtype=object), np.array(["a"], dtype=object))


def test_top_columns_orders_breaks_ties_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, -np.inf], [-np.inf] * 5])
    assert _top_columns(scores, 3).tolist() == [[1, 3, 2], [-1, -1, -1]]
    assert _top_columns(scores, 6).tolist() == [[1, 3, 2, 0, -1, -1], [-1] * 6]


# ----------------------------------------------------------------------------------- split

def _events(rows: list[tuple[str, str, str, float]]) -> EventBatch:
    users, songs, kinds, ts = zip(*rows, strict=True)
    return EventBatch.from_columns(np.array(users, dtype=object), np.array(songs, dtype=object),
                                   np.array(kinds, dtype=object), np.array(ts, dtype=float))


def test_split_holds_out_the_last_newly_played_song() -> None:
    later, earlier = sorted(["p", "q"], key=song_key, reverse=True)
    rows = [
        ("a", "s1", "play", 1), ("a", "s2", "play", 2), ("a", "s1", "play", 5),  # s1 at 5 is a repeat
        ("a", "s4", "skip", 6),                                                 # skips are not plays
        ("b", "x", "play", 1), ("b", "x", "play", 2),                           # one distinct song: untested
        ("c", earlier, "play", 5), ("c", later, "play", 5), ("c", "o", "play", 1),  # a tie in ts
        ("d", "z", "skip", 1), ("d", "y", "play", 2), ("d", "z", "play", 3), ("d", "z", "play", 4),
    ]
    events = _events(rows)
    train, users, songs = loo_split(events)
    assert users.tolist() == ["a", "c", "d"]
    assert songs.tolist() == ["s2", later, "z"]
    kept = set(zip(train.user_ids.tolist(), train.song_ids.tolist(), train.ts.tolist(), strict=True))
    expected = {(u, s, float(t)) for u, s, _, t in rows} - {("a", "s2", 2.0), ("c", later, 5.0),
                                                             ("d", "z", 1.0), ("d", "z", 3.0), ("d", "z", 4.0)}
    assert kept == expected
    # the rule depends on the events, not on the order of the rows
    perm = np.random.default_rng(0).permutation(len(events))
    train2, users2, songs2 = loo_split(events.take(perm))
    assert users2.tolist() == users.tolist() and songs2.tolist() == songs.tolist()
    assert len(train2) == len(train)


def test_negatives_are_unseen_distinct_and_fixed_by_the_seed() -> None:
    log = clustered_log()
    _, users, _ = loo_split(log)
    negs = sample_negatives(log, users, 99, seed=3)
    assert negs.shape == (len(users), 99)
    touched = set(zip(log.user_ids.tolist(), log.song_ids.tolist(), strict=True))
    for u, row in zip(users, negs, strict=True):
        assert len(set(row)) == 99
        assert not any((u, s) in touched for s in row)
    np.testing.assert_array_equal(sample_negatives(log, users, 99, seed=3), negs)
    assert (sample_negatives(log, users, 99, seed=4) != negs).any()
    with pytest.raises(ValueError):
        sample_negatives(log, users, 10_000)
    with pytest.raises(ValueError):
        sample_negatives(log, np.array(["nobody"], dtype=object))


# --------------------------------------------------------------------------------- scorers

@pytest.fixture(scope="module")
def fitted() -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    log = clustered_log()
    train, users, songs = loo_split(log)
    cache: dict = {}  # type: ignore[type-arg]
    scorers = {}
    for name in MODELS:
        if name in NOT_FITTED_HERE:
            continue
        scorer = make_scorer(name, ncf_config=QUICK_NCF, cache=cache)
        scorer.fit(train)
        scorers[name] = scorer
    negs = sample_negatives(log, users, 30)
    return scorers, users, np.concatenate([songs[:, None], negs], axis=1)


@pytest.mark.parametrize("name", [m for m in MODELS if m not in NOT_FITTED_HERE])
def test_batch_equals_single_user(fitted, name: str) -> None:  # type: ignore[no-untyped-def]
    scorers, users, cands = fitted
    scorer = scorers[name]
    users, cands = users[:12], cands[:12]
    batch_scores, batch_top = scorer.score(users, cands), scorer.top(users, 10)
    assert batch_scores.shape == (12, cands.shape[1]) and batch_top.shape == (12, 10)
    for i, user in enumerate(users):
        alone = scorer.score(np.array([user], dtype=object), cands[i:i + 1])
        np.testing.assert_allclose(alone[0], batch_scores[i], rtol=1e-5, atol=1e-6)
        assert scorer.top(np.array([user], dtype=object), 10)[0].tolist() == batch_top[i].tolist()


def test_top_excludes_training_songs_and_unknowns_follow_the_policy(fitted) -> None:  # type: ignore[no-untyped-def]
    scorers, users, cands = fitted
    train, _, _ = loo_split(clustered_log())
    for name in ("als", "ncf", "ncf-rerank", "popularity"):
        scorer = scorers[name]
        top = scorer.top(users[:20], 10)
        for u, row in zip(users[:20], top, strict=True):
            assert not set(row) & set(train.song_ids[train.user_ids == u]), name
        # unknown song -> -inf; unknown user -> the songs' training popularity
        odd = np.array([[cands[0, 0], "never-seen-song"]], dtype=object)
        assert scorer.score(users[:1], odd)[0, 1] == -np.inf
        stranger = scorer.score(np.array(["stranger"], dtype=object), cands[:1])
        np.testing.assert_array_equal(stranger, scorers["popularity"].score(np.array(["stranger"], dtype=object),
                                                                            cands[:1]))
    with pytest.raises(ValueError):
        scorers["als"].score(users[:2], cands[:3])
    with pytest.raises(ValueError):
        scorers["als"].top(users[:2], 0)


def test_rerank_only_reorders_the_retrieved_songs(fitted) -> None:  # type: ignore[no-untyped-def]
    scorers, users, cands = fitted
    dot, rerank = scorers["ncf-dot"].top(users, 200), scorers["ncf-rerank"].top(users, 10)
    for d, r in zip(dot, rerank, strict=True):
        assert set(r) <= set(d)
    np.testing.assert_array_equal(scorers["ncf-rerank"].score(users, cands), scorers["ncf"].score(users, cands))


# ------------------------------------------------------------------------------ end to end

def test_evaluate_loo_on_a_lastfm_slice(lastfm_import) -> None:  # type: ignore[no-untyped-def]
    events, _ = read_event_file(lastfm_import.events_path)
    keep = np.isin(events.user_ids, np.unique(events.user_ids)[:150])
    result = evaluate_loo(events.take(keep), list(DEFAULT_MODELS), k=5, ncf_config=QUICK_NCF)
    assert set(result) == {"protocol", "k", "users", "models"}
    assert result["protocol"] == "loo" and result["k"] == 5
    _, tested, _ = loo_split(events.take(keep))
    assert result["users"] == len(tested) > 100
    assert list(result["models"]) == list(DEFAULT_MODELS)
    for name, m in result["models"].items():
        assert set(m) == {"hr@5", "ndcg@5", "recall@5", "fit_s"}, name
        assert 0.0 <= m["ndcg@5"] <= m["hr@5"] <= 1.0 and 0.0 <= m["recall@5"] <= 1.0 and m["fit_s"] >= 0
        assert m["hr@5"] > 5 / 100, f"{name} must beat a random order on real data"


def test_evaluate_file_runs_loo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_event_file(clustered_log(n_users=60), tmp_path / "events.csv")
    out = io.StringIO()
    result = evaluate_file(path, "loo", ["popularity", "als"], 10, 0.5, Console(file=out, width=120))
    assert "leave-last-out" in out.getvalue()
    assert result["users"] == 60 and list(result["models"]) == ["popularity", "als"]
    # the file path changes nothing: the same figures as evaluating the events in memory
    direct = evaluate_loo(read_event_file(path)[0], ["popularity", "als"])
    for name in ("popularity", "als"):
        for metric in ("hr@10", "ndcg@10", "recall@10"):
            assert result["models"][name][metric] == pytest.approx(direct["models"][name][metric]), (name, metric)
    assert result["models"]["popularity"]["hr@10"] > 0
    with pytest.raises(ValueError):
        evaluate_loo(clustered_log(n_users=60), ["als", "svd"])
    with pytest.raises(ValueError):
        evaluate_loo(clustered_log(n_users=60), ["als", "als"])
