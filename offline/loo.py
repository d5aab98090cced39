"""Leave-last-out evaluation (the NCF paper's protocol) of several recommenders on one event log.

Each tested user's most recent newly discovered song is held out (:func:`loo_split`); every model is
fitted on the rest and judged on (a) ranking that song among 99 songs the user never touched, HR@k
and NDCG@k, the same sampled negatives for every model, and (b) full-catalog recall@k: is the song
in the model's top k of all songs the user has not interacted with in training.

Models named in ``offline.scorers.TUNED`` (``implicit-als-tuned``, ``hybrid``, ...) get their
hyper-parameters from the log's early half first (``offline.loo_tune``), never from the held-out songs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from offline.intervals import ratio_interval
from offline.scorers import MODELS, TUNED, make_scorer
from online_models.batch import PLAY, EventBatch
from online_models.metrics import sampled_hit_ndcg
from online_models.ncf_config import NCFConfig
from online_models.ranking import sample_unseen, seen_keys

# ``ease`` and ``als-tuned``: the hybrid's two parts alone (tuned for it anyway; ``ease`` reuses its EASE table)
DEFAULT_MODELS = ("als", "als-tuned", "ease", "hybrid", "ncf", "implicit-als", "implicit-als-tuned", "implicit-bpr",
                  "implicit-bpr-tuned", "popularity")
PEERS = ("implicit-als", "implicit-als-tuned", "implicit-bpr", "implicit-bpr-tuned")
SAMPLED_NEGATIVES = 99
INTERVAL_USERS = 1000  # blocks of held-out users the ratios' intervals resample (users are independent)


# ------------------------------------------------------------------------------------- split

def loo_split(events: EventBatch) -> tuple[EventBatch, np.ndarray, np.ndarray]:
    """Hold out each user's last newly played song.

    Rule, per user: consider the user's play events (skips never count as plays) in the order
    (ts, stable key of the song id, position in ``events``), and the *first* play of each distinct song
    in that order. The held-out pair is the latest of these first plays: the most recent song the user
    discovered. Ties in ``ts`` (dates, batch imports) are broken by the song's blake2b key rather than by
    file order, so the choice does not follow how ids happen to be numbered or rows sorted. Users with
    fewer than 2 distinct played songs are not tested. ``train`` is ``events`` without *every* event of a
    tested user on their held-out song (its plays, repeats and skips), so no model sees the pair, and
    with all of the user's other events, in their original order.

    Returns ``(train, test_users, test_songs)``; the test arrays are ordered by user id.
    """
    if not isinstance(events, EventBatch):
        raise ValueError("events must be an EventBatch")
    _, ucode = np.unique(events.user_ids, return_inverse=True)
    songs, scode = np.unique(events.song_ids, return_inverse=True)
    n_songs = max(1, len(songs))
    plays = np.flatnonzero(events.kinds == PLAY)
    if len(plays) == 0:
        return events, np.empty(0, object), np.empty(0, object)
    order = np.lexsort((plays, events.song_keys[plays], events.ts[plays], ucode[plays]))
    p = plays[order]
    pair = ucode[p].astype(np.int64) * n_songs + scode[p]
    _, first = np.unique(pair, return_index=True)
    firsts = p[np.sort(first)]  # first plays, still in (user, ts, key, position) order
    fu = ucode[firsts]
    last = np.flatnonzero(np.r_[fu[1:] != fu[:-1], True])
    distinct = np.diff(np.r_[-1, last])
    held = firsts[last[distinct >= 2]]
    test_pairs = ucode[held].astype(np.int64) * n_songs + scode[held]
    drop = np.isin(ucode.astype(np.int64) * n_songs + scode, test_pairs)
    return events.take(~drop), events.user_ids[held], events.song_ids[held]


def sample_negatives(events: EventBatch, test_users: np.ndarray, n: int = SAMPLED_NEGATIVES,
                     seed: int = 0) -> np.ndarray:
    """``n`` distinct songs per test user, uniform over the songs of ``events`` the user never
    interacted with (no play or skip, in train or test); object array (U, n). Depends only on the
    events and ``seed``, so every model is ranked against the same negatives."""
    users, ucode = np.unique(events.user_ids, return_inverse=True)
    songs, scode = np.unique(events.song_ids, return_inverse=True)
    test_users = np.asarray(test_users, dtype=object)
    rows = np.searchsorted(users, test_users) if len(users) else np.zeros(len(test_users), np.int64)
    if len(test_users) and (rows.max() >= len(users) or (users[np.minimum(rows, len(users) - 1)] != test_users).any()):
        raise ValueError("every test user must appear in events")
    seen = seen_keys(ucode, scode, max(1, len(songs)))
    try:
        picked = sample_unseen(np.random.default_rng(seed), rows.astype(np.int64), n, max(1, len(songs)), seen)
    except ValueError as exc:
        raise ValueError(f"cannot sample {n} negatives per user from {len(songs)} songs: {exc}") from exc
    return songs[picked]


# ----------------------------------------------------------------------------------- metrics

def sampled_metrics(scores: np.ndarray, k: int) -> tuple[float, float]:
    """Mean HR@k and NDCG@k; column 0 of ``scores`` is the held-out song, the rest its negatives
    (ties count as their expectation under a random order, see ``online_models.metrics``)."""
    hit, ndcg = sampled_hit_ndcg(scores, k)
    return (float(hit.mean()), float(ndcg.mean())) if len(hit) else (float("nan"), float("nan"))


def full_hits(top: np.ndarray, test_songs: np.ndarray) -> np.ndarray:
    """Per user, whether their held-out song is in their top list (U, k)."""
    top = np.asarray(top, dtype=object)
    test = np.asarray(test_songs, dtype=object)
    if top.ndim != 2 or test.shape != (len(top),):
        raise ValueError(f"top must be (U, k) and test_songs (U,), got {top.shape} and {test.shape}")
    return (top == test[:, None]).any(axis=1)


def full_recall(top: np.ndarray, test_songs: np.ndarray) -> float:
    """Share of users whose held-out song is in their top list (U, k): recall@k with one test item."""
    found = full_hits(top, test_songs)
    return float(found.mean()) if len(found) else float("nan")


# -------------------------------------------------------------------------------- evaluation

def evaluate_loo(events: EventBatch, models: list[str], k: int = 10, console: Console | None = None,
                 seed: int = 0, *, negatives: int = SAMPLED_NEGATIVES, ncf_config: NCFConfig | None = None,
                 show_progress: bool = False, tuning: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Leave-last-out figures of each model: HR@k and NDCG@k against ``negatives`` sampled songs,
    full-catalog recall@k and training seconds. ``seed`` fixes the negatives and the models' seeds
    (an explicit ``ncf_config`` keeps its own seed).

    Tuned models (``TUNED``) take their parameters from ``tuning`` (``offline.loo_tune.tune_loo``'s
    answer), which is computed here on the early half of ``events`` when not given. The result adds
    ``"tuning"`` (the chosen parameters and their early-window figures) and ``"ratios"`` (our best
    model over the best implicit peer, per metric) when they apply."""
    if not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not models:
        raise ValueError("no models to evaluate")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if len(set(models)) != len(models):
        raise ValueError("a model is listed twice")
    train, test_users, test_songs = loo_split(events)
    if len(test_users) == 0:
        raise ValueError("no user has 2 distinct played songs: nothing to evaluate")
    if tuning is None and set(models) & set(TUNED):
        from offline.loo_tune import tune_loo

        tuning = tune_loo(events, models, k, seed, negatives, console)
    tuning = tuning or {}
    missing = [m for m in models if m in TUNED and m not in tuning]
    if missing:
        raise ValueError(f"no tuned parameters for {', '.join(missing)}")
    negs = sample_negatives(events, test_users, negatives, seed)
    candidates = np.concatenate([test_songs[:, None], negs], axis=1)
    ncf_config = ncf_config or NCFConfig(seed=seed)
    cache: dict[str, Any] = {}
    results: dict[str, dict[str, float]] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}  # each user's hit, for the ratios' intervals
    for name in models:
        params = tuning[name]["params"] if name in TUNED else None
        scorer = make_scorer(name, seed, ncf_config, cache, show_progress, params=params)
        scorer.fit(train)
        hits, ndcgs = sampled_hit_ndcg(scorer.score(test_users, candidates), k)
        found = full_hits(scorer.top(test_users, k), test_songs)
        hr, ndcg, recall = float(hits.mean()), float(ndcgs.mean()), float(found.mean())
        results[name] = {f"hr@{k}": hr, f"ndcg@{k}": ndcg, f"recall@{k}": recall, "fit_s": scorer.fit_s}
        per_user[name] = {f"hr@{k}": hits, f"recall@{k}": found}
        if console is not None:
            console.print(f"[dim]{name}: HR@{k} {hr:.4f}  fit {scorer.fit_s:.1f}s[/dim]")
    out: dict[str, Any] = {"protocol": "loo", "k": int(k), "users": len(test_users), "models": results}
    if tuning:
        out["tuning"] = {name: {key: v for key, v in t.items() if key != "default_early"} for name, t in tuning.items()}
    ratios = best_over_peers(results, k, per_user)
    if ratios:
        out["ratios"] = ratios
    if console is not None:
        console.print(_table(out, negatives))
        for metric, r in ratios.items():
            low, high = r.get("ratio_interval_95", (None, None))
            spread = f" (95% interval {low:.3f}-{high:.3f}x)" if low is not None else ""
            console.print(f"{metric}: {r['ours']} / {r['peer']} = {r['ratio']:.3f}x{spread}")
    return out


def best_over_peers(results: dict[str, dict[str, float]], k: int,
                    per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, dict[str, Any]]:
    """Per metric (HR@k, recall@k): our best model, the best implicit peer, and the ratio of the two.
    Ours are every model that is not a peer and not ``popularity``. Empty if either side is absent.
    With each model's ``per_user`` figures, each ratio also gets a 95% interval (users resampled in
    pairs, :func:`offline.intervals.ratio_interval`)."""
    ours = [m for m in results if m not in PEERS and m != "popularity"]
    peers = [m for m in results if m in PEERS]
    out: dict[str, dict[str, Any]] = {}
    if not ours or not peers:
        return out
    for metric in (f"hr@{k}", f"recall@{k}"):
        best = max(ours, key=lambda m: results[m][metric])
        peer = max(peers, key=lambda m: results[m][metric])
        value = results[peer][metric]
        out[metric] = {"ours": best, "peer": peer,
                       "ratio": results[best][metric] / value if value > 0 else float("inf")}
        if per_user is not None and best in per_user and peer in per_user:
            ours_hits, peer_hits = per_user[best][metric], per_user[peer][metric]
            if len(ours_hits) >= 2:
                interval = ratio_interval(ours_hits, peer_hits, blocks=min(INTERVAL_USERS, len(ours_hits)))
                if interval is not None:
                    out[metric]["ratio_interval_95"] = [round(interval[0], 4), round(interval[1], 4)]
    return out


def _table(result: dict[str, Any], negatives: int) -> Table:
    k = result["k"]
    table = Table(title=f"leave-last-out, {result['users']} users: HR/NDCG vs {negatives} sampled negatives, "
                        "recall over the full catalog")
    for col in ("model", f"HR@{k}", f"NDCG@{k}", f"recall@{k}", "fit s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in result["models"].items():
        table.add_row(name, f"{m[f'hr@{k}']:.4f}", f"{m[f'ndcg@{k}']:.4f}", f"{m[f'recall@{k}']:.4f}",
                      f"{m['fit_s']:.1f}")
    return table
