"""Tuning chooses on the early part of a stream only, and keeps the best configuration it tried."""

from __future__ import annotations

import numpy as np

from offline.tune import GRID, tune
from online_models.batch import SKIP, EventBatch
from online_models.config import OnlineConfig
from tests.synthetic import synthetic_log

SMALL_GRID = {"cooc_candidates": [5, 40], "ranker_hidden": [0]}


def test_grid_names_only_settings_that_exist() -> None:
    fields = set(OnlineConfig.__dataclass_fields__)
    assert set(GRID) <= fields
    assert all(len(values) >= 2 for values in GRID.values())


def test_tuning_never_sees_the_late_part_and_keeps_its_best_trial() -> None:
    log = synthetic_log(n_events=2400)
    result = tune(log, early_fraction=0.5, grid=SMALL_GRID)
    assert result["early_events"] == 1200
    best = max(t["recall@10"] for t in result["trials"])
    assert result["best_score"] == best
    # the late half rewritten into other users and songs: the choice cannot change
    late = slice(1200, None)
    scrambled = EventBatch.from_columns(
        np.r_[log.user_ids[:1200], np.array([f"x{i % 7}" for i in range(1200)], dtype=object)],
        np.r_[log.song_ids[:1200], np.array([f"y{i % 13}" for i in range(1200)], dtype=object)],
        np.where(log.kinds == SKIP, "skip", "play").astype(object), log.ts, None,
        np.r_[log.event_ids[:1200], np.array([f"z{i}" for i in range(1200)], dtype=object)])
    assert len(scrambled.take(late)) == 1200
    again = tune(scrambled, early_fraction=0.5, grid=SMALL_GRID)
    assert again["best"] == result["best"] and again["trials"] == result["trials"]
