"""Leave-last-out hyper-parameters, chosen on the EARLY half of a log only.

The reported protocol holds out each user's latest new song of the whole log. Tuning never sees those:
it runs the same protocol (same hold-out rule, number of sampled negatives and seed) on the events
before the log's median timestamp, the *early window*, fitting every trial on that window's training
part and judging it on that window's held-out songs, which are all earlier than the median. Nothing is
fixed in advance for one file: each log gets its own values, chosen at run time.

* implicit's ALS and BPR (the peers) and this project's ALS: coordinate descent from the defaults, one
  parameter at a time over ``GRIDS``, up to two rounds, maximising the geometric mean of HR@k and
  full-catalogue recall@k (scale-free: each metric counts the same in relative terms).
* ``hybrid`` (EASE on recent plays + ALS): its ALS part is the tuned ALS; its EASE penalty, recency
  half-life and ALS weight are searched exhaustively over ``HYBRID_GRID`` (one EASE fit per penalty),
  maximising the *worse* of its two ratios to the best peer on the early window, HR@k against the best
  peer HR@k and recall@k against the best peer recall@k: the target's own form. (The geometric mean
  chose recall-heavy settings that lose HR on MovieLens: recency moves recall far more than HR.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from offline.loo import full_recall, loo_split, sample_negatives, sampled_metrics
from offline.scorers import Scorer, make_scorer
from online_models.batch import EventBatch

GRIDS: dict[str, dict[str, list[Any]]] = {
    "implicit-als": {"factors": [32, 64, 128, 256],
                     "regularization": [0.001, 0.01, 0.1, 1.0, 5.0, 20.0, 50.0, 100.0, 200.0],
                     "alpha": [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0], "iterations": [10, 15, 30, 50, 100]},
    "implicit-bpr": {"factors": [32, 64, 128, 256], "learning_rate": [0.003, 0.01, 0.03, 0.1],
                     "regularization": [0.0001, 0.001, 0.01, 0.1], "iterations": [30, 100, 300, 1000]},
    "als": {"factors": [32, 64, 128], "regularization": [0.05, 0.5, 5.0, 20.0, 50.0, 100.0, 200.0],
            "alpha": [1.0, 3.0, 10.0, 30.0], "half_life_days": [0.0, 30.0, 90.0, 365.0], "iterations": [15, 30]},
}
# the libraries' own defaults, where coordinate descent starts (ours: OnlineConfig's)
STARTS: dict[str, dict[str, Any]] = {
    "implicit-als": {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
    "implicit-bpr": {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
    "als": {"factors": 64, "regularization": 0.05, "alpha": 10.0, "half_life_days": 90.0, "iterations": 15},
}
HYBRID_GRID: dict[str, list[float]] = {"l2": [100.0, 300.0, 1000.0, 3000.0], "half_life_events": [0.0, 30.0, 10.0, 3.0],
                                       "als_weight": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]}
EARLY_QUANTILE = 0.5
ROUNDS = 2


@dataclass(frozen=True)
class Figures:
    hr: float
    ndcg: float
    recall: float

    @property
    def balanced(self) -> float:
        return math.sqrt(max(self.hr, 0.0) * max(self.recall, 0.0))

    def worse_ratio(self, ref: Figures) -> float:
        return min(self.hr / ref.hr if ref.hr > 0 else math.inf,
                   self.recall / ref.recall if ref.recall > 0 else math.inf)


@dataclass(frozen=True)
class Problem:
    """One leave-last-out problem: training events, tested users, candidates (held-out song first)."""

    train: EventBatch
    users: np.ndarray
    songs: np.ndarray
    candidates: np.ndarray

    @classmethod
    def of(cls, events: EventBatch, negatives: int, seed: int) -> Problem:
        train, users, songs = loo_split(events)
        if len(users) == 0:
            raise ValueError("no user has 2 distinct played songs: nothing to tune on")
        negs = sample_negatives(events, users, negatives, seed)
        return cls(train, users, songs, np.concatenate([songs[:, None], negs], axis=1))

    def judge(self, scorer: Scorer, k: int) -> Figures:
        """Figures of a scorer already fitted on ``train``."""
        hr, ndcg = sampled_metrics(scorer.score(self.users, self.candidates), k)
        return Figures(hr, ndcg, full_recall(scorer.top(self.users, k), self.songs))


def early_window(events: EventBatch, quantile: float = EARLY_QUANTILE) -> EventBatch:
    """The events strictly before the ``quantile`` of their timestamps (the median by default)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    if len(events) == 0:
        raise ValueError("no events")
    early = events.take(events.ts < np.quantile(events.ts, quantile))
    if len(early) == 0:
        raise ValueError("every event shares the earliest timestamp: there is no early window to tune on")
    return early


Trials = list[dict[str, Any]]


def coordinate_descent(fit: Callable[[dict[str, Any]], Figures], start: dict[str, Any],
                       grid: dict[str, list[Any]], objective: Callable[[Figures], float], rounds: int = ROUNDS,
                       advance: Callable[[], None] | None = None) -> tuple[dict[str, Any], Figures, Trials]:
    """Walk one parameter at a time over ``grid`` from ``start``, keeping a change only if it raises
    ``objective`` strictly; stop after ``rounds`` or a round without change. ``fit`` fits and judges one
    set of parameters. Returns the best parameters, their figures and every trial."""
    best = dict(start)
    best_fig = fit(best)
    trials = [{"params": dict(best), **asdict(best_fig)}]
    for _ in range(rounds):
        changed = False
        for name, values in grid.items():
            for value in values:
                if best.get(name) == value:
                    continue
                params = dict(best, **{name: value})
                fig = fit(params)
                trials.append({"params": params, **asdict(fig)})
                if advance is not None:
                    advance()
                if objective(fig) > objective(best_fig):
                    best, best_fig, changed = params, fig, True
        if not changed:
            break
    return best, best_fig, trials


def _needed(models: Iterable[str]) -> set[str]:
    wanted = set(models)
    if wanted & {"hybrid", "ease"}:  # the hybrid's objective is relative to both peers, tuned
        wanted |= {"hybrid", "als-tuned", "implicit-als-tuned", "implicit-bpr-tuned"}
    return wanted


def tune_loo(events: EventBatch, models: Iterable[str], k: int = 10, seed: int = 0, negatives: int = 99,
             console: Console | None = None, grids: dict[str, dict[str, list[Any]]] | None = None,
             hybrid_grid: dict[str, list[float]] | None = None) -> dict[str, dict[str, Any]]:
    """Choose the parameters of each tuned model among ``models`` (and what they depend on) on the early
    window of ``events``. Returns ``{model: {"params", "early": figures, "trials"}}`` plus, when
    the hybrid was tuned, ``"peer-reference"``: the best peer figures it was judged against."""
    grids = grids or GRIDS
    wanted = _needed(models)
    early = early_window(events)
    problem = Problem.of(early, negatives, seed)
    out: dict[str, dict[str, Any]] = {}
    with Progress(console=console, transient=True, disable=console is None) as progress:
        task = progress.add_task("tuning on the early window", total=None)

        def fit(name: str) -> Callable[[dict[str, Any]], Figures]:
            def run(params: dict[str, Any]) -> Figures:
                scorer = make_scorer(name, seed, params=params)
                scorer.fit(problem.train)
                return problem.judge(scorer, k)
            return run

        for model, base in (("implicit-als-tuned", "implicit-als"), ("implicit-bpr-tuned", "implicit-bpr"),
                            ("als-tuned", "als")):
            if model not in wanted:
                continue
            progress.update(task, description=f"tuning {base} on the early window")
            params, fig, trials = coordinate_descent(fit(model), STARTS[base], grids[base], lambda f: f.balanced,
                                                     advance=lambda: progress.advance(task))
            out[model] = {"params": params, "early": asdict(fig), "default_early": trials[0], "trials": trials}
            if console is not None:
                console.print(f"[dim]{model}: {params} -> early HR@{k} {fig.hr:.4f} recall@{k} {fig.recall:.4f}[/dim]")
        if "hybrid" in wanted:
            progress.update(task, description="tuning the hybrid on the early window")
            out.update(_tune_hybrid(problem, out, k, seed, hybrid_grid or HYBRID_GRID, lambda: progress.advance(task)))
            if console is not None:
                fig = out["hybrid"]["early"]
                console.print(f"[dim]hybrid: {out['hybrid']['params']} -> early HR@{k} {fig['hr']:.4f} "
                              f"recall@{k} {fig['recall']:.4f}[/dim]")
    if "ease" in wanted:  # the hybrid's EASE part alone, for the ablation
        out["ease"] = {"params": dict(out["hybrid"]["params"], als_weight=0.0)}
    return out


def _tune_hybrid(problem: Problem, tuned: dict[str, dict[str, Any]], k: int, seed: int,
                 grid: dict[str, list[float]], advance: Callable[[], None]) -> dict[str, dict[str, Any]]:
    peers = [Figures(**tuned[m]["early"]) for m in ("implicit-als-tuned", "implicit-bpr-tuned")]
    peers += [Figures(**{f: tuned[m]["default_early"][f] for f in ("hr", "ndcg", "recall")})
              for m in ("implicit-als-tuned", "implicit-bpr-tuned")]
    ref = Figures(max(p.hr for p in peers), max(p.ndcg for p in peers), max(p.recall for p in peers))
    als = tuned["als-tuned"]["params"]
    cache: dict[str, Any] = {}  # one ALS fit and one EASE table per penalty, shared by the trials
    best: tuple[float, float] | None = None
    trials: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for l2, half_life, weight in product(grid["l2"], grid["half_life_events"], grid["als_weight"]):
        params = {"l2": l2, "half_life_events": half_life, "als_weight": weight, "als": als}
        scorer = make_scorer("hybrid", seed, cache=cache, params=params)
        scorer.fit(problem.train)
        fig = problem.judge(scorer, k)
        trials.append({"params": {key: v for key, v in params.items() if key != "als"}, **asdict(fig)})
        advance()
        score = (fig.worse_ratio(ref), fig.balanced)  # ties broken by the balanced objective
        if best is None or score > best:
            best, chosen = score, {"params": params, "early": asdict(fig)}
    return {"hybrid": {**chosen, "trials": trials}, "peer-reference": asdict(ref)}
