"""The hybrid model (EASE on recent plays + ALS, ``online_models.hybrid``) as the leave-last-out
evaluation sees it, and its EASE part alone."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from offline.scorers import _CHUNK_CELLS, _RowScorer
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.hybrid import HybridConfig, HybridModel


def hybrid_config(params: dict[str, Any], seed: int = 0) -> HybridConfig:
    """A ``HybridConfig`` from flat parameters: ``l2``, ``half_life_events``, ``als_weight``,
    ``neighbours`` and ``als`` (a dict of ``OnlineConfig`` fields); ``seed`` seeds the ALS part."""
    unknown = set(params) - {"l2", "half_life_events", "als_weight", "neighbours", "als"}
    if unknown:
        raise ValueError(f"unknown hybrid parameter(s) {', '.join(sorted(unknown))}")
    als = replace(OnlineConfig(), **dict(params.get("als", {}), seed=seed))
    return HybridConfig(**{k: v for k, v in params.items() if k != "als"}, als=als)


class HybridScorer(_RowScorer):
    """``hybrid``: the blend; ``ease``: the same model with ``als_weight`` 0.

    Scorers sharing a ``cache`` share the expensive parts fitted on the same training events: the ALS
    factors per ALS configuration and the EASE table per (l2, neighbours). So the early-window search
    (``offline.loo_tune``) fits each EASE table once and tries every half-life and weight on it, and
    ``ease`` beside ``hybrid`` costs nothing. A cache must only be shared over one training set."""

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0, cache: dict[str, Any] | None = None) -> None:
        super().__init__()
        if name not in ("hybrid", "ease"):
            raise ValueError(f"unknown hybrid model {name!r}")
        self.name = name
        config = hybrid_config(params, seed)
        self.config = replace(config, als_weight=0.0) if name == "ease" else config
        self.cache: dict[str, Any] = {} if cache is None else cache
        self._model: HybridModel | None = None

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        from online_models.als import train_als
        from online_models.interactions import Interactions

        cfg = self.config
        als_key = "als:" + json.dumps(cfg.als.__dict__, sort_keys=True)
        ease_key = f"ease:{cfg.l2}:{cfg.neighbours}"
        spent = 0.0
        if als_key not in self.cache:
            started = time.perf_counter()
            self.cache[als_key] = (train_als(Interactions.from_events(train, cfg.als), cfg.als),
                                   time.perf_counter() - started)
        als, als_s = self.cache[als_key]
        if ease_key not in self.cache:
            started = time.perf_counter()
            model = HybridModel.fit(train, cfg, als=als)
            self.cache[ease_key] = (model, time.perf_counter() - started)
        model, ease_s = self.cache[ease_key]
        self._model = model.with_blend(cfg.half_life_events, cfg.als_weight)
        spent = ease_s + (als_s if cfg.als_weight > 0 else 0.0)
        self.fit_s = spent  # what fitting this model alone costs, shared or not
        return self._model.users, self._model.songs

    @property
    def model(self) -> HybridModel:
        if self._model is None:
            raise ValueError("the hybrid scorer is not fitted")
        return self._model

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return self.model.scores(users)

    def _score_rows(self, users: np.ndarray, songs: np.ndarray) -> np.ndarray:
        # standardising needs each user's whole row: score it, keep the candidates, a chunk of users at a time
        out = np.empty(songs.shape, np.float64)
        step = max(1, _CHUNK_CELLS // max(1, len(self._songs)))
        for start in range(0, len(users), step):
            rows = slice(start, start + step)
            out[rows] = np.take_along_axis(self._score_all(users[rows]), songs[rows], axis=1)
        return out
