"""The prequential protocol's bookkeeping: baselines with heard songs let back in, and the ratios."""

from __future__ import annotations

import numpy as np
import pytest

from offline.prequential import MODELS, make_model, prequential, versus
from online_models.batch import EventBatch
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
