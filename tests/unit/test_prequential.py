"""The prequential protocol's bookkeeping: baselines with heard songs let back in, and the ratios."""

from __future__ import annotations

import numpy as np
import pytest

from offline.prequential import MODELS, make_model, prequential, versus
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig


def _loyal_log(n_users: int = 4, rounds: int = 60) -> EventBatch:
    """Each user plays only their own song, over and over."""
    users = np.tile(np.arange(n_users), rounds)
    return EventBatch.from_columns(np.array([f"u{u}" for u in users], dtype=object),
                                   np.array([f"s{u}" for u in users], dtype=object),
                                   ts=1.6e9 + np.arange(len(users), dtype=np.float64))


def test_a_baseline_with_heard_songs_let_back_in_is_its_own_model() -> None:
    result = prequential(_loyal_log(), ["popularity", "popularity+heard", "online"], k=10, batch_size=8,
                         config=OnlineConfig(factors=4, iterations=4))
    recall = {name: m["recall@10"] for name, m in result["models"].items()}
    # every replayed play is a song its user heard: filtered, popularity can never hit it; let back
    # in, one of four songs is always in a list of ten
    assert recall["popularity"] == 0.0 and recall["popularity+heard"] == 1.0
    assert recall["online"] > 0.9, "the ranker learnt that these users go back to their song"
    assert result["versus"]["defaults"]["baseline"] == "popularity"
    assert result["versus"]["defaults"]["ratio"] is None  # nothing to divide by
    either = result["versus"]["either_rule"]
    assert {k: either[k] for k in ("baseline", "recall@10", "ratio")} == {
        "baseline": "popularity+heard", "recall@10": 1.0, "ratio": round(recall["online"], 4)}
    low, high = either["ratio_interval_95"]  # the same plays resampled: the ratio lies inside
    assert low <= either["ratio"] <= high <= 1.0


def test_versus_takes_the_best_baseline_under_each_rule() -> None:
    models = {"popularity": {"recall@10": 0.02}, "itemknn": {"recall@10": 0.04}, "itemknn+heard": {"recall@10": 0.05},
              "online": {"recall@10": 0.06}, "retrain": {"recall@10": 0.09}}
    assert versus(models) == {"defaults": {"baseline": "itemknn", "recall@10": 0.04, "ratio": 1.5},
                              "either_rule": {"baseline": "itemknn+heard", "recall@10": 0.05, "ratio": 1.2}}
    assert versus({"popularity": {"recall@10": 0.1}}) == {}


def test_model_names_are_checked() -> None:
    config = OnlineConfig()
    assert make_model("itemknn+heard", config, 100).name == "itemknn+heard"
    assert make_model("itemknn+heard", config, 100).config.relisten == "always"  # type: ignore[attr-defined]
    for name in MODELS:
        assert make_model(name, config, 100).name == name
    for bad in ("online+heard", "nope", "+heard"):
        with pytest.raises(ValueError, match="unknown model"):
            make_model(bad, config, 100)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        prequential(_loyal_log(), ["popularity", "nope"])


def test_history_before_batch_counts_what_any_model_could_have_learnt() -> None:
    from offline.segments import history_before_batch

    def log(users: list[str], kinds: list[str]) -> EventBatch:
        return EventBatch.from_columns(np.array(users, dtype=object), np.array(["s"] * len(users), dtype=object),
                                       np.array(kinds, dtype=object), ts=np.arange(len(users), dtype=np.float64))

    train = log(["u1", "u1", "u2"], ["play", "skip", "play"])
    # batches of two: [u1, u3] [u3, u1 (a skip, not scored)] [u2]
    test = log(["u1", "u3", "u3", "u1", "u2"], ["play", "play", "play", "skip", "play"])
    # u1: its two training events; u3: nothing yet, then its play of the first batch; u2: its one
    # training event (the skip of the second batch belongs to u1, and a batch never sees itself)
    assert history_before_batch(train, test, 2).tolist() == [2, 0, 1, 1]
    assert history_before_batch(train, test, 5).tolist() == [2, 0, 0, 1]
    with pytest.raises(ValueError, match="batch_size"):
        history_before_batch(train, test, 0)


def test_segment_recall_splits_each_models_hits_by_history() -> None:
    from offline.segments import segment_labels, segment_recall

    assert segment_labels() == ["0", "1-9", "10-99", "100+"]
    history = np.array([0, 0, 5, 50, 50, 50])
    out = segment_recall(history, {"a": np.array([1, 0, 1, 0, 1, 1], bool)}, k=10)
    assert out == {"history_events": ["0", "1-9", "10-99", "100+"], "plays": [2, 1, 3, 0],
                   "recall@10": {"a": [0.5, 1.0, 0.6667, None]}}
    with pytest.raises(ValueError, match="3 hits for 6"):
        segment_recall(history, {"b": np.zeros(3, bool)}, k=10)


def test_the_segments_add_up_to_the_overall_figures() -> None:
    result = prequential(_loyal_log(n_users=4, rounds=60), ["popularity+heard", "online"], k=10, batch_size=8,
                         config=OnlineConfig(factors=4, iterations=4))
    seg = result["segments"]
    assert sum(seg["plays"]) == result["scored_plays"]
    # 30 events per user in the training half, up to 59 before the last batch: all in 10-99
    assert seg["plays"] == [0, 0, result["scored_plays"], 0]
    for name, m in result["models"].items():
        weighted = sum((r or 0.0) * n for r, n in zip(seg["recall@10"][name], seg["plays"], strict=True))
        assert weighted / sum(seg["plays"]) == pytest.approx(m["recall@10"], abs=1e-4)


def test_the_segment_table_shows_online_beside_its_baselines() -> None:
    from offline.prequential import segment_models

    models = {name: {} for name in ("popularity", "itemknn", "itemknn+heard", "static+heard", "online", "retrain")}
    result = {"models": models, "versus": {"defaults": {"baseline": "itemknn"},
                                           "either_rule": {"baseline": "static+heard"}}}
    assert segment_models(result) == ["online", "popularity", "itemknn", "static+heard"]
    assert segment_models({"models": {"a": {}, "b": {}}}) == ["a", "b"]


def test_the_segment_table_fits_an_80_column_terminal_and_names_each_figure() -> None:
    import io

    from rich.console import Console

    from offline.segments import print_segments

    names = ["online", "popularity", "itemknn", "itemknn+heard", "static+heard", "retrain"]
    segments = {"history_events": ["0", "1-9", "10-99", "100+"], "plays": [17582, 886, 8498, 16763],
                "recall@10": {name: [0.0563 + i / 1e4, None, 0.0464, 0.0300] for i, name in enumerate(names)}}
    out = io.StringIO()
    print_segments(segments, names, 10, Console(file=out, width=80, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") == 6}
    assert "17582 (40%)" in rows["plays"] and "16763 (38%)" in rows["plays"]
    for i, name in enumerate(names):  # one row per model, whole, with its own figures
        cells = [c.strip() for c in rows[name].split("│")[2:6]]
        assert cells == [f"{0.0563 + i / 1e4:.4f}", "-", "0.0464", "0.0300"]


class _TwoStage:
    """A two-stage model with a known answer: it ranks the candidates ["s0", "s1"] and lists "s0" only."""

    name = "two-stage"

    def fit(self, events: EventBatch) -> None:
        pass

    def partial_fit(self, events: EventBatch) -> np.ndarray:
        return np.unique(events.user_ids)

    def recommend(self, user_ids: np.ndarray, k: int = 10):  # type: ignore[no-untyped-def]
        return self.recommend_with_pool(user_ids, k)[0]

    def recommend_with_pool(self, user_ids: np.ndarray, k: int = 10):  # type: ignore[no-untyped-def]
        from online_models.base import RecList

        lists = RecList.empty(len(user_ids), k)
        lists.song_ids[:, 0] = "s0"
        from index_manager.keys import song_keys

        return lists, np.tile(np.r_[song_keys(np.array(["s0", "s1"], dtype=object)), -1], (len(user_ids), 1))


def test_the_replay_counts_a_song_retrieved_but_ranked_out_apart_from_one_never_retrieved() -> None:
    from offline.prequential import replay_model, split

    train, test = split(_loyal_log(n_users=4, rounds=60), 0.5)  # user i plays s{i}: a quarter each
    run = replay_model(_TwoStage(), train, test, k=10, batch_size=8)
    played = test.song_ids[test.kinds == PLAY]
    assert run.hits.tolist() == (played == "s0").tolist()
    assert run.pool_hits is not None and run.pool_hits.tolist() == np.isin(played, ["s0", "s1"]).tolist()
    assert run.hits.mean() == 0.25 and run.pool_hits.mean() == 0.5
    # a one-stage model has no pool to count
    assert replay_model(make_model("popularity", OnlineConfig(), 100), train, test, 10, 8).pool_hits is None


def test_the_online_pool_holds_every_hit_and_its_lists_are_recommends() -> None:
    from index_manager.keys import song_keys

    config = OnlineConfig(factors=4, iterations=4)
    result = prequential(_loyal_log(n_users=6, rounds=40), ["popularity+heard", "online"], k=2, batch_size=8,
                         config=config)
    online, seg = result["models"]["online"], result["segments"]
    assert "pool_recall" not in result["models"]["popularity+heard"]
    assert online["recall@2"] <= online["pool_recall"] <= 1.0
    assert set(seg["pool_recall"]) == {"online"}
    for pooled, listed in zip(seg["pool_recall"]["online"], seg["recall@2"]["online"], strict=True):
        assert (pooled is None) == (listed is None) and (pooled is None or pooled >= listed)
    # recommend_with_pool serves recommend's very lists, from the candidates it returns
    log = _loyal_log(n_users=6, rounds=40)
    a, b = make_model("online", config, 100), make_model("online", config, 100)
    a.fit(log)
    b.fit(log)
    users = np.array(["u0", "u3", "stranger"], dtype=object)
    lists = a.recommend(users, 2)
    pooled, pool = b.recommend_with_pool(users, 2)  # type: ignore[attr-defined]
    assert (pooled.song_ids == lists.song_ids).all() and np.allclose(pooled.scores, lists.scores)
    for listed, candidates in zip(pooled.song_ids, pool, strict=True):
        assert set(song_keys(np.array([s for s in listed if s], dtype=object)).tolist()) <= set(candidates) - {-1}
