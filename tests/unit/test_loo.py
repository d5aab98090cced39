"""Leave-last-out: the split rule, metrics with known answers, scorer batching, the JSON result."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.sparse as sp
from rich.console import Console

from index_manager.artifacts import load_artifact, save_artifact
from index_manager.keys import song_key
from offline.evaluate import evaluate_file
from offline.eventfile import read_event_file, write_event_file
from offline.loo import (
    DEFAULT_MODELS,
    best_over_peers,
    evaluate_loo,
    full_recall,
    loo_split,
    sample_negatives,
    sampled_metrics,
)
from offline.loo_tune import Figures, coordinate_descent, early_window, tune_loo
from offline.scorers import MODELS, TUNED, _top_columns, make_scorer
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.ease import ease_weights, play_recency
from online_models.hybrid import HybridConfig, HybridModel, standardise
from online_models.metrics import sampled_hit_ndcg
from online_models.ncf_config import NCFConfig
from tests.clustered import clustered_log

QUICK_NCF = NCFConfig(epochs=2, val_users=40)
# tiny tuning grids: the procedure runs end to end in a second or two
TINY_GRIDS = {"implicit-als": {"factors": [16], "regularization": [1.0]}, "implicit-bpr": {"factors": [16]},
              "als": {"factors": [16], "regularization": [1.0]}}
TINY_HYBRID = {"l2": [10.0, 100.0], "half_life_events": [0.0, 5.0], "als_weight": [0.0, 1.0]}
TINY_PARAMS = {"implicit-als-tuned": {"factors": 16}, "implicit-bpr-tuned": {"factors": 16},
               "als-tuned": {"factors": 16}, "hybrid": {"l2": 10.0, "half_life_events": 5.0, "als_weight": 1.0},
               "ease": {"l2": 10.0, "half_life_events": 5.0, "als_weight": 0.0}}
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
        scorer = make_scorer(name, ncf_config=QUICK_NCF, cache=cache, params=TINY_PARAMS.get(name))
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
    for name in ("als", "hybrid", "ncf", "ncf-rerank", "popularity"):
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
    tuning = tune_loo(events.take(keep), DEFAULT_MODELS, k=5, grids=TINY_GRIDS, hybrid_grid=TINY_HYBRID)
    result = evaluate_loo(events.take(keep), list(DEFAULT_MODELS), k=5, ncf_config=QUICK_NCF, tuning=tuning)
    assert set(result) == {"protocol", "k", "users", "models", "tuning", "ratios"}
    assert result["tuning"]["hybrid"]["params"]["l2"] in TINY_HYBRID["l2"]
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


# ------------------------------------------------------------------------ EASE and the hybrid

def test_ease_weights_are_the_closed_form_pruned_by_magnitude() -> None:
    x = sp.random(300, 40, density=0.15, random_state=0, format="csr")
    x.data[:] = 1.0
    l2 = 5.0
    p = np.linalg.inv((x.T @ x).toarray() + l2 * np.eye(40))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ease_weights(x, l2, neighbours=40).toarray(), expected, atol=2e-5)
    pruned = ease_weights(x, l2, neighbours=5).toarray()
    assert (np.count_nonzero(pruned, axis=1) <= 5).all() and (np.diag(pruned) == 0).all()
    kept = np.abs(expected) >= -np.sort(-np.abs(expected), axis=1)[:, 4:5]
    np.testing.assert_allclose(pruned, np.where(kept, expected, 0.0), atol=2e-5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            ease_weights(x, bad)
    with pytest.raises(ValueError):
        ease_weights(x.toarray(), 1.0)  # type: ignore[arg-type]


def test_play_recency_counts_later_plays_and_treats_ties_as_simultaneous() -> None:
    # user 0: song 0 at t1, 1 at t2, 2 at t3, 0 again at t3 (its latest play); user 1: two songs at one time
    rows, cols, ts = np.array([0, 0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1, 2]), np.array([1., 2, 3, 3, 5, 5])
    w = play_recency(rows, cols, ts, (2, 3), half_life_events=2.0).toarray()
    np.testing.assert_allclose(w, [[1.0, 0.5, 1.0], [0.0, 1.0, 1.0]])  # song 1 of user 0 has 2 later plays
    np.testing.assert_allclose(play_recency(rows, cols, ts, (2, 3), 0.0).toarray(), [[1, 1, 1], [0, 1, 1]])
    perm = np.random.default_rng(0).permutation(6)
    np.testing.assert_allclose(play_recency(rows[perm], cols[perm], ts[perm], (2, 3), 2.0).toarray(), w)
    with pytest.raises(ValueError):
        play_recency(rows, cols, ts, (2, 2), 1.0)  # song 2 outside the shape
    with pytest.raises(ValueError):
        play_recency(rows, cols, ts, (2, 3), -1.0)


def test_standardise_rows() -> None:
    z = standardise(np.array([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]))
    np.testing.assert_allclose(z[0], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    np.testing.assert_array_equal(z[1], 0.0)


def test_hybrid_scores_are_the_standardised_blend_by_hand() -> None:
    # user a played song 0 at t=1, song 1 at t=2 (half-life 1 play: weights 0.5, 1); user b played song 2
    ease = sp.csr_matrix(np.array([[0.0, 2.0, 2.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32))
    plays = (np.array([0, 0, 1]), np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]))
    uf = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # b has no ALS taste: a constant row, standardised to 0
    itf = np.array([[1.0, 0.0], [0.0, 5.0], [-1.0, 0.0]], np.float32)
    users, songs = np.array(["a", "b"], object), np.array(["s0", "s1", "s2"], object)
    c = math.sqrt(1.5)
    # a: EASE row 0.5·[0,2,2] + [0,0,1] = [0,1,2] -> [-c,0,c]; ALS row [1,0,-1] -> [c,0,-c]
    # b: EASE row [1,0,0] -> [√2, -√2/2, -√2/2]; ALS 0
    for weight, row_a in ((0.0, [-c, 0.0, c]), (1.0, [0.0, 0.0, 0.0]), (2.0, [c, 0.0, -c])):
        model = HybridModel(HybridConfig(half_life_events=1.0, als_weight=weight), users, songs, uf, itf, ease, plays)
        np.testing.assert_allclose(model.history.toarray(), [[0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
        np.testing.assert_allclose(model.scores(np.array([0, 1])),
                                   [row_a, [math.sqrt(2), -math.sqrt(2) / 2, -math.sqrt(2) / 2]], atol=1e-6)


def test_hybrid_serves_from_histories_and_round_trips_as_an_artifact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train, _, _ = loo_split(clustered_log())
    model = HybridModel.fit(train, HybridConfig(l2=10.0, half_life_events=5.0, als_weight=1.0, neighbours=30,
                                                als=OnlineConfig(factors=8, iterations=3)))
    rows = np.arange(7)
    # the serving entry point, given the same histories and user vectors, is the model
    np.testing.assert_allclose(model.score_history(model.history[rows], model.user_factors[rows]),
                               model.scores(rows))
    ease_only = model.with_blend(5.0, 0.0)
    assert ease_only.ease is model.ease  # no refit
    np.testing.assert_allclose(ease_only.scores(rows), standardise((model.history[rows] @ model.ease).toarray()))
    version = save_artifact(tmp_path, model.to_artifact())
    loaded = load_artifact(tmp_path, version)
    assert loaded.kind == "hybrid" and loaded.params["l2"] == 10.0
    np.testing.assert_array_equal(HybridModel.table_from_artifact(loaded).toarray(), model.ease.toarray())
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    with pytest.raises(ValueError):
        model.score_history(model.history[rows], model.user_factors[:3])
    with pytest.raises(ValueError):
        HybridConfig(l2=0.0)


# ------------------------------------------------------------------------------ tuning

def test_coordinate_descent_walks_one_parameter_at_a_time() -> None:
    def fit(p: dict) -> Figures:  # type: ignore[type-arg]
        good = 1.0 - 0.1 * abs(p["a"] - 3) - 0.05 * abs(p["b"] - 20)  # best at a=3, b=20
        return Figures(hr=good, ndcg=good, recall=good)

    best, fig, trials = coordinate_descent(fit, {"a": 1, "b": 10}, {"a": [1, 2, 3, 4], "b": [10, 20, 30]},
                                           lambda f: f.balanced)
    assert best == {"a": 3, "b": 20} and fig.hr == pytest.approx(1.0)
    # round 1: start + a in {2, 3, 4} + b in {20, 30}; round 2: a in {1, 2, 4} + b in {10, 30}, no change
    assert len(trials) == 1 + 5 + 5 and trials[0]["params"] == {"a": 1, "b": 10}
    assert Figures(0.5, 0.3, 0.2).worse_ratio(Figures(0.25, 0.1, 0.4)) == pytest.approx(0.5)


def test_early_window_is_strictly_before_the_median() -> None:
    log = clustered_log(n_users=10)
    early = early_window(log)
    assert len(early) == len(log) // 2
    assert early.ts.max() < np.median(log.ts) <= log.ts[~np.isin(log.ts, early.ts)].min()
    same = EventBatch.from_columns(np.array(["a", "b"], dtype=object), np.array(["x", "y"], dtype=object),
                                   None, np.array([5.0, 5.0]))
    with pytest.raises(ValueError):
        early_window(same)


def test_tuning_never_sees_the_late_half() -> None:
    log = clustered_log()
    late = log.ts >= np.median(log.ts)
    # every late event (all the reported held-out songs among them) changed to a random song
    scrambled = EventBatch.from_columns(log.user_ids, np.where(late, np.random.default_rng(1).permutation(log.song_ids),
                                                               log.song_ids), log.event_names(), log.ts)
    first = tune_loo(log, ["hybrid", "ease"], grids=TINY_GRIDS, hybrid_grid=TINY_HYBRID)
    again = tune_loo(scrambled, ["hybrid", "ease"], grids=TINY_GRIDS, hybrid_grid=TINY_HYBRID)
    assert set(first) == {"implicit-als-tuned", "implicit-bpr-tuned", "als-tuned", "hybrid", "ease", "peer-reference"}
    for name in ("implicit-als-tuned", "implicit-bpr-tuned", "als-tuned", "hybrid"):
        assert first[name]["params"] == again[name]["params"] and first[name]["early"] == again[name]["early"], name
    assert first["ease"]["params"] == dict(first["hybrid"]["params"], als_weight=0.0)
    hybrid = first["hybrid"]
    assert len(hybrid["trials"]) == 8 and hybrid["params"]["als"] == first["als-tuned"]["params"]
    ref = first["peer-reference"]
    best = max(hybrid["trials"], key=lambda t: (min(t["hr"] / ref["hr"], t["recall"] / ref["recall"]),
                                               math.sqrt(t["hr"] * t["recall"])))
    assert {k: v for k, v in hybrid["params"].items() if k != "als"} == best["params"]


def test_tuned_models_need_their_parameters_and_ratios_name_the_winners() -> None:
    for name in TUNED:
        with pytest.raises(ValueError):
            make_scorer(name)
    with pytest.raises(ValueError):
        evaluate_loo(clustered_log(n_users=60), ["hybrid"], tuning={})
    results = {"als": {"hr@10": 0.6, "recall@10": 0.10}, "hybrid": {"hr@10": 0.5, "recall@10": 0.12},
               "implicit-als": {"hr@10": 0.55, "recall@10": 0.08},
               "implicit-bpr-tuned": {"hr@10": 0.4, "recall@10": 0.1},
               "popularity": {"hr@10": 0.9, "recall@10": 0.9}}
    ratios = best_over_peers(results, 10)
    assert ratios["hr@10"]["ours"] == "als" and ratios["hr@10"]["peer"] == "implicit-als"
    assert ratios["hr@10"]["ratio"] == pytest.approx(0.6 / 0.55)
    assert ratios["recall@10"]["ours"] == "hybrid" and ratios["recall@10"]["ratio"] == pytest.approx(1.2)
    assert best_over_peers({"als": results["als"]}, 10) == {}
    # with each user's figures, every ratio gets an interval around it (users resampled in pairs)
    rng = np.random.default_rng(2)
    per_user = {name: {"hr@10": (rng.random(400) < m["hr@10"]).astype(float),
                       "recall@10": rng.random(400) < m["recall@10"]} for name, m in results.items()}
    measured = {name: {metric: float(v.mean()) for metric, v in figures.items()} for name, figures in per_user.items()}
    for metric, r in best_over_peers(measured, 10, per_user).items():
        low, high = r["ratio_interval_95"]
        assert low < r["ratio"] < high, metric
