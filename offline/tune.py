"""Hyper-parameter choice on the EARLY part of a stream only, by prequential replay.

The evaluation that reports quality trains on the first ``train_fraction`` of the timeline and
replays the rest; tuning must never see that rest. So tuning runs the same protocol inside the early
part alone (train on its first half, replay its second half) and walks one parameter at a time
(coordinate descent) from the current defaults.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from offline.prequential import prequential, split
from online_models.batch import EventBatch
from online_models.config import OnlineConfig

GRID: dict[str, list[Any]] = {
    "recent_plays": [20, 50, 100],
    "cooc_query": [10, 30, 50],
    "cooc_candidates": [10, 20, 40],
    "cooc_half_life_events": [0.0, 20000.0, 100000.0],
    "ranker_learning_rate": [0.02, 0.05, 0.1],
    "ranker_hidden": [0, 16, 32],
    "factors": [32, 64, 128],
    "alpha": [2.0, 10.0, 40.0],
}


def tune(events: EventBatch, early_fraction: float = 0.5, k: int = 10, grid: dict[str, list[Any]] | None = None,
         base: OnlineConfig | None = None, rounds: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Coordinate descent over ``grid`` on the first ``early_fraction`` of the events only."""
    early, _ = split(events, early_fraction)
    grid = grid or GRID
    best = base or OnlineConfig()
    metric = f"recall@{k}"

    def score(cfg: OnlineConfig) -> float:
        r = prequential(early, ["online"], k=k, train_fraction=0.5, config=cfg)
        return float(r["models"]["online"][metric])

    reference: dict[str, Any] = prequential(early, ["popularity", "static"], k=k, train_fraction=0.5, config=best)
    trials: list[dict[str, Any]] = []
    best_score = score(best)
    trials.append({"params": {}, metric: best_score})
    for _ in range(rounds):
        for name, values in grid.items():
            for value in values:
                if getattr(best, name) == value:
                    continue
                cfg = replace(best, **{name: value})
                s = score(cfg)
                trials.append({"params": {name: value}, metric: s})
                if console is not None:
                    console.print(f"{name}={value}: {metric} {s:.4f} (best {best_score:.4f})")
                if s > best_score:
                    best, best_score = cfg, s
    result: dict[str, Any] = {
        "early_events": len(early), "metric": metric, "best": asdict(best), "best_score": best_score,
        "reference": {m: v[metric] for m, v in reference["models"].items()}, "trials": trials}
    if console is not None:
        table = Table(title=f"tuned on the first {early_fraction:.0%} of the stream ({len(early)} events)")
        table.add_column("parameter")
        table.add_column("chosen")
        for name in grid:
            table.add_row(name, str(getattr(best, name)))
        console.print(table)
        console.print(f"online {metric} on the tuning window: {best_score:.4f}; popularity "
                      f"{result['reference']['popularity']:.4f}, static {result['reference']['static']:.4f}")
    return result
