"""Prequential (test-then-learn) evaluation through the same online code the Faust worker runs.

The timeline is split at ``train_fraction`` of the events. Each model is fitted on the first part,
then the rest is replayed in time order in micro-batches: for every play event of a batch the model
is first asked for the user's top-k (what Redis would have served at that moment, i.e. computed
before the batch), the hit and its rank are scored, and only then does the model ``partial_fit`` the
batch. Skips are learnt from but not scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from offline.intervals import ratio_interval
from offline.segments import history_before_batch, print_segments, segment_recall
from online_models.base import PooledRecommender, Recommender
from online_models.baselines import PeriodicRetrain, PopularityRecommender, StaticALS
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.itemknn import ItemKNN
from online_models.online import OnlineALS

BASELINES = ("popularity", "static", "itemknn")
HEARD = "+heard"  # a baseline with the songs each user heard let back in (MUSICREC_RELISTEN=always)
MODELS = (*BASELINES, *(b + HEARD for b in BASELINES), "online", "retrain")
# stretches of the replay the ratio's interval resamples (each at least two batches' plays)
INTERVAL_BLOCKS = 100


def make_model(name: str, config: OnlineConfig, retrain_every: int) -> Recommender:
    """The model ``name``; ``<baseline>+heard`` is that baseline with heard songs let back in, the
    fair peer of an online model that learns whether to serve them (``relisten = learn``)."""
    if name.endswith(HEARD) and name.removesuffix(HEARD) in (*BASELINES, "sequence"):
        model = make_model(name.removesuffix(HEARD), replace(config, relisten="always"), retrain_every)
        model.name = name
        return model
    factories: dict[str, Callable[[], Recommender]] = {
        "popularity": lambda: PopularityRecommender(config),
        "static": lambda: StaticALS(config),
        "itemknn": lambda: ItemKNN(config),
        "online": lambda: OnlineALS(config),
        "retrain": lambda: PeriodicRetrain(config, every=retrain_every),
        "sequence": lambda: _sequence(config),
    }
    if name not in factories:
        raise ValueError(f"unknown model {name!r} for the prequential protocol; choose from {', '.join(factories)}, "
                         f"or a baseline with {HEARD} ({', '.join(b + HEARD for b in (*BASELINES, 'sequence'))})")
    return factories[name]()


def _sequence(config: OnlineConfig) -> Recommender:
    from online_models.sequence import SASRecRecommender  # the sequence model's modules load only when asked for

    return SASRecRecommender(online=config)


@dataclass
class ModelRun:
    name: str
    hits: np.ndarray  # per scored play event
    gains: np.ndarray
    fit_s: float
    replay_s: float
    pool_hits: np.ndarray | None = None  # per scored play: its song among the candidates ranked (two-stage models)


def split(events: EventBatch, train_fraction: float) -> tuple[EventBatch, EventBatch]:
    """First ``train_fraction`` of the events in time order (file order breaks ties) and the rest."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train_fraction must be in (0, 1)")
    ordered = events.sorted_by_time()
    cut = round(train_fraction * len(ordered))
    if cut == 0 or cut == len(ordered):
        raise ValueError(f"{len(ordered)} events are too few to split at {train_fraction}")
    return ordered.take(slice(0, cut)), ordered.take(slice(cut, None))


def replay_model(model: Recommender, train: EventBatch, test: EventBatch, k: int, batch_size: int,
                 on_batch: Callable[[int], None] | None = None) -> ModelRun:
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    plays = test.kinds == PLAY
    hits = np.zeros(int(plays.sum()), dtype=bool)
    gains = np.zeros(len(hits))
    pooled = model if isinstance(model, PooledRecommender) else None
    pool_hits = np.zeros(len(hits), dtype=bool) if pooled is not None else None
    done = 0
    t1 = time.perf_counter()
    for start in range(0, len(test), batch_size):
        batch = test.take(slice(start, start + batch_size))
        is_play = batch.kinds == PLAY
        if is_play.any():
            users, row = np.unique(batch.user_ids[is_play], return_inverse=True)
            if pooled is not None and pool_hits is not None:
                recs, pool = pooled.recommend_with_pool(users, k)
                pool_hits[done:done + len(row)] = (pool[row] == batch.song_keys[is_play][:, None]).any(axis=1)
            else:
                recs = model.recommend(users, k)
            match = recs.song_ids[row] == batch.song_ids[is_play][:, None]
            hit = match.any(axis=1)
            n = len(hit)
            hits[done:done + n] = hit
            gains[done:done + n] = np.where(hit, 1.0 / np.log2(np.argmax(match, axis=1) + 2.0), 0.0)
            done += n
        model.partial_fit(batch)
        if on_batch is not None:
            on_batch(len(batch))
    return ModelRun(model.name, hits, gains, fit_s, time.perf_counter() - t1, pool_hits)


def windows(values: np.ndarray, n_windows: int) -> list[float]:
    parts = np.array_split(values.astype(np.float64), max(1, min(n_windows, len(values))))
    return [float(p.mean()) if len(p) else 0.0 for p in parts]


def prequential(events: EventBatch, models: list[str] | None = None, k: int = 10, train_fraction: float = 0.5,
                batch_size: int = 256, n_windows: int = 20, config: OnlineConfig | None = None,
                retrain_every: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the protocol for each model; returns the JSON-ready figures (also printed if ``console``)."""
    if k <= 0 or batch_size <= 0:
        raise ValueError("k and batch_size must be positive")
    models = list(models or MODELS)
    config = config or OnlineConfig()
    for name in models:  # every name checked before the first model spends minutes on a replay
        make_model(name, config, 1)
    train, test = split(events, train_fraction)
    every = retrain_every or max(1, len(test) // 10)
    play_ts = test.ts[test.kinds == PLAY]
    bounds = [float(p[-1]) for p in np.array_split(play_ts, max(1, min(n_windows, len(play_ts)))) if len(p)]
    result: dict[str, Any] = {
        "protocol": "prequential", "k": k, "events": len(test), "train_events": len(train),
        "scored_plays": len(play_ts), "batch_size": batch_size, "retrain_every": every,
        "models": {}, "series": {"window_end_ts": bounds, "models": {}},
    }
    runs: list[ModelRun] = []
    for name in models:
        model = make_model(name, config, every)
        if console is not None:
            with Progress(TextColumn(f"[bold]{name:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeRemainingColumn(), console=console, transient=True) as bar:
                task = bar.add_task(name, total=len(test))
                advance = partial(bar.advance, task)
                run = replay_model(model, train, test, k, batch_size, advance)
        else:
            run = replay_model(model, train, test, k, batch_size)
        runs.append(run)
        result["models"][name] = {
            f"recall@{k}": float(run.hits.mean()) if len(run.hits) else 0.0,
            f"ndcg@{k}": float(run.gains.mean()) if len(run.gains) else 0.0,
            "fit_s": round(run.fit_s, 3), "replay_s": round(run.replay_s, 3),
            "events_per_s": round(len(test) / run.replay_s, 1) if run.replay_s > 0 else None,
        }
        if run.pool_hits is not None:  # share of the plays whose song was among the candidates ranked
            result["models"][name]["pool_recall"] = float(run.pool_hits.mean()) if len(run.pool_hits) else 0.0
        result["series"]["models"][name] = {f"recall@{k}": windows(run.hits, n_windows),
                                            f"ndcg@{k}": windows(run.gains, n_windows)}
    result["versus"] = versus(result["models"], k, {run.name: run.hits for run in runs},
                              blocks=max(2, min(INTERVAL_BLOCKS, len(play_ts) // (2 * batch_size))))
    history = history_before_batch(train, test, batch_size)
    result["segments"] = segment_recall(history, {run.name: run.hits for run in runs}, k)
    pools = {run.name: run.pool_hits for run in runs if run.pool_hits is not None}
    if pools:
        result["segments"]["pool_recall"] = segment_recall(history, pools, k)[f"recall@{k}"]
    if console is not None:
        print_table(result, console)
        print_segments(result["segments"], segment_models(result), k, console)
    return result


def segment_models(result: dict[str, Any]) -> list[str]:
    """Who the segment table shows: ``online`` beside the baselines as they run by default and the
    best under either rule for heard songs, or, without ``online``, the first five models."""
    if "online" not in result["models"]:
        return list(result["models"])[:5]
    named = [v["baseline"] for v in result.get("versus", {}).values()]
    return list(dict.fromkeys(["online", *(b for b in BASELINES if b in result["models"]), *named]))


def versus(models: dict[str, Any], k: int = 10, hits: dict[str, np.ndarray] | None = None,
           blocks: int = INTERVAL_BLOCKS) -> dict[str, Any]:
    """``online``'s recall@k over the best baseline as they run by default, and over the best under
    either rule for heard songs (``<baseline>+heard`` included); empty without ``online`` or baselines.
    With the runs' per-play ``hits``, each ratio also gets its 95% interval (:func:`ratio_interval`)."""
    metric = f"recall@{k}"
    out: dict[str, Any] = {}
    if "online" not in models:
        return out
    online = models["online"][metric]
    for key, names in (("defaults", BASELINES), ("either_rule", (*BASELINES, *(b + HEARD for b in BASELINES)))):
        present = [n for n in names if n in models]
        if not present:
            continue
        best = max(present, key=lambda n: models[n][metric])
        value = models[best][metric]
        out[key] = {"baseline": best, metric: value, "ratio": round(online / value, 4) if value > 0 else None}
        if hits is not None and "online" in hits and best in hits and len(hits[best]) >= 2 * blocks:
            interval = ratio_interval(hits["online"], hits[best], blocks)
            if interval is not None:
                out[key]["ratio_interval_95"] = [round(interval[0], 4), round(interval[1], 4)]
    return out


def print_table(result: dict[str, Any], console: Console) -> None:
    k = result["k"]
    table = Table(title=f"prequential, {result['events']} events replayed after {result['train_events']} "
                        f"({result['scored_plays']} plays scored, batches of {result['batch_size']})")
    for col in ("model", f"recall@{k}", f"ndcg@{k}", "in pool", "replay events/s", "fit s"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in result["models"].items():
        table.add_row(name, f"{m[f'recall@{k}']:.4f}", f"{m[f'ndcg@{k}']:.4f}",
                      f"{m['pool_recall']:.4f}" if "pool_recall" in m else "-",
                      f"{m['events_per_s']:.0f}" if m["events_per_s"] else "-", f"{m['fit_s']:.2f}")
    console.print(table)
    for key, label in (("defaults", "as they run by default"), ("either_rule", "under either rule for heard songs")):
        v = result.get("versus", {}).get(key)
        if v and v["ratio"] is not None:
            interval = v.get("ratio_interval_95")
            spread = f"; 95% interval {interval[0]:.2f}-{interval[1]:.2f}x" if interval else ""
            console.print(f"online / best baseline {label}: [bold]{v['ratio']:.2f}x[/] ({v['baseline']}{spread})")


def plot_series(result: dict[str, Any], path: Path) -> Path:
    """PNG of recall@k per window over time, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    k = result["k"]
    ends = [datetime.fromtimestamp(t, tz=UTC) for t in result["series"]["window_end_ts"]]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colours: dict[str, Any] = {}
    for name, series in result["series"]["models"].items():
        values = series[f"recall@{k}"]
        label = f"{name} ({result['models'][name][f'recall@{k}']:.3f})"
        base = name.removesuffix(HEARD)
        # a baseline and its +heard twin share a colour, the twin dashed
        style = {"color": colours[base], "linestyle": "--"} if base != name and base in colours else {}
        (line,) = ax.plot(ends[:len(values)], values, marker="o", markersize=3, label=label, **style)  # type: ignore[arg-type]
        colours.setdefault(name, line.get_color())
    ax.set_ylabel(f"recall@{k} per window")
    ax.set_title(f"Prequential recall@{k}: {result['events']} events replayed")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
