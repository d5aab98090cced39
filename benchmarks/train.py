"""`musicrec bench train`: how long full retraining takes, and what it buys.

Three parts, each speed figure next to a reference measured in the same run:

* **ALS retrain at 1M events.** A seeded synthetic log (Zipf song popularity, taste clusters, skips,
  partial plays) is aggregated into the training table (``Interactions``) with numpy, then factorised
  by the project's ``train_als`` with the default ``OnlineConfig``, called as the retrain job calls it
  (``MUSICREC_TRAIN_THREADS``, default all cores).
  References: ``implicit``'s own ``AlternatingLeastSquares`` with the library defaults on the same
  confidence matrix and threads, and, for the aggregation, ``Interactions.from_events`` (the exact
  online rules) on a slice of the same log, which must also give the same table.
* **NeuMF epoch time, torch vs mlx**, on the Last.fm HetRec events: both backends start from the
  same weights and train on the same samples, epoch by epoch, alternating which goes first; they are
  each other's reference.
* **Leave-last-out HR@10 / NDCG@10** (``offline.loo.evaluate_loo``) of this project's ALS and NeuMF
  next to implicit's ALS and BPR and popularity on the Last.fm events.

The Last.fm data is looked up like the tests do: ``MUSICREC_SHARED_DATA``, then ``../shared/data``
next to the checkout.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks.common import finish_context, print_table, run_context, stopwatch
from online_models.batch import PLAY, SKIP, EventBatch
from online_models.config import OnlineConfig
from online_models.history import DAY
from online_models.interactions import Interactions
from stream.errors import ConfigError
from stream.settings import load_settings

LASTFM = "hetrec2011-lastfm-2k"
REPO = Path(__file__).resolve().parents[1]
ALS_TARGET_S = 10.0
LOO_MODELS = ["als", "ncf", "implicit-als", "implicit-bpr", "popularity"]

FULL: dict[str, Any] = {
    "events": 1_000_000, "users": 50_000, "songs": 20_000, "clusters": 40,
    "check_users": 5_000,  # users whose events also go through Interactions.from_events (reference + check)
    "als_rounds": 1,  # train_als and implicit alternate this many times; the median is reported
    "ncf_epochs": 2, "lastfm_users": None, "loo_ncf_epochs": None,
}
QUICK: dict[str, Any] = {
    "events": 50_000, "users": 5_000, "songs": 3_000, "clusters": 10, "check_users": 1_000,
    "als_rounds": 1, "ncf_epochs": 1, "lastfm_users": 200, "loo_ncf_epochs": 2,
}


def shared_data() -> Path:
    """Directory holding ``hetrec2011-lastfm-2k``: ``MUSICREC_SHARED_DATA``, then ``../shared/data``
    next to the checkout (the same lookup as the tests)."""
    candidates = [os.environ.get("MUSICREC_SHARED_DATA", ""), str(REPO.parent / "shared" / "data")]
    for c in candidates:
        if c and Path(c, LASTFM).is_dir():
            return Path(c)
    tried = ", ".join(c for c in candidates if c)
    raise ConfigError(f"the Last.fm data ({LASTFM}/) was not found in: {tried}; set MUSICREC_SHARED_DATA "
                      f"to the directory that holds {LASTFM}")


# ------------------------------------------------------------------------ synthetic 1M log

def synthetic_log(n_events: int, n_users: int, n_songs: int, n_clusters: int, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """A seeded listening log as integer codes: ``user``, ``song``, ``kind`` (PLAY/SKIP), ``ts``,
    ``ms_played``.

    Songs have Zipf popularity (exponent 1) and belong to taste clusters of power-law sizes; a user
    has 1-3 clusters and draws 80% of their events from them (popularity-weighted within the cluster),
    the rest from the whole catalog. User activity is log-normal, capped at 300 expected events so no
    history reaches ``max_history`` (the numpy aggregation below does not apply that cap). Skips are
    10% inside a user's taste and 35% outside it; plays run 5 s to 5 min; 180 days of timestamps.
    """
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_songs + 1, dtype=np.float64)
    pop = pop[rng.permutation(n_songs)]
    size_w = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    cluster_of = rng.choice(n_clusters, size=n_songs, p=size_w / size_w.sum())
    by_cluster = np.argsort(cluster_of, kind="stable")
    cum = np.cumsum(pop[by_cluster])
    ends = np.searchsorted(cluster_of[by_cluster], np.arange(n_clusters), side="right")
    starts = np.r_[0, ends[:-1]]
    lo = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    hi = np.where(ends > starts, cum[np.maximum(ends - 1, 0)], lo)

    activity = rng.lognormal(0.0, 1.0, n_users)
    activity = np.minimum(activity / activity.sum() * n_events, 300.0)
    user = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    n_tastes = rng.integers(1, 4, n_users)
    tastes = rng.choice(n_clusters, size=(n_users, 3), p=size_w / size_w.sum())
    cluster = tastes[user, (rng.random(n_events) * n_tastes[user]).astype(np.int64)]
    in_taste = (rng.random(n_events) < 0.8) & (ends[cluster] > starts[cluster])
    target = lo[cluster] + rng.random(n_events) * (hi[cluster] - lo[cluster])
    song = np.where(in_taste,
                    by_cluster[np.minimum(np.searchsorted(cum, target, side="right"), n_songs - 1)],
                    np.minimum(np.searchsorted(np.cumsum(pop), rng.random(n_events) * pop.sum(), side="right"),
                               n_songs - 1))
    skip = rng.random(n_events) < np.where(in_taste, 0.10, 0.35)
    kind = np.where(skip, SKIP, PLAY).astype(np.int8)
    ms = np.where(skip, rng.uniform(1_000, 25_000, n_events), rng.uniform(5_000, 300_000, n_events))
    ts = 1.75e9 + rng.random(n_events) * 180 * DAY
    return {"user": user.astype(np.int64), "song": song.astype(np.int64), "kind": kind, "ts": ts,
            "ms_played": ms}


def aggregate(log: dict[str, np.ndarray], user_names: np.ndarray, song_names: np.ndarray,
              config: OnlineConfig) -> Interactions:
    """The training table with numpy, by the online state's rules (``HistoryStore``): a play counts
    ``clip(ms_played / full_play_ms, 0.05, 1)``, a skip ``skip_weight`` negative, each decayed with
    ``half_life_days`` to the user's latest event, summed per (user, song). Equal to
    ``Interactions.from_events`` while no user exceeds ``max_history`` songs."""
    user, song, ts = log["user"], log["song"], log["ts"]
    is_skip = log["kind"] == SKIP
    ms = log["ms_played"]
    play_w = np.where(np.isnan(ms), 1.0, np.clip(np.nan_to_num(ms) / config.full_play_ms, 0.05, 1.0))
    last = np.full(len(user_names), -np.inf)
    np.maximum.at(last, user, ts)
    half_life_s = config.half_life_days * DAY
    decay = np.exp2(-(last[user] - ts) / half_life_s) if half_life_s > 0 else np.ones(len(ts))
    pair, inv = np.unique(user * np.int64(len(song_names)) + song, return_inverse=True)
    pos = np.bincount(inv, weights=np.where(is_skip, 0.0, play_w) * decay, minlength=len(pair))
    neg = np.bincount(inv, weights=np.where(is_skip, config.skip_weight, 0.0) * decay, minlength=len(pair))
    return Interactions(user_names[pair // len(song_names)], song_names[pair % len(song_names)], pos, neg)


def _sorted_rows(table: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((table.song_ids.astype(str), table.user_ids.astype(str)))
    keys = np.char.add(np.char.add(table.user_ids[order].astype(str), "|"), table.song_ids[order].astype(str))
    return keys, table.pos[order], table.neg[order]


def _check_aggregate(log: dict[str, np.ndarray], user_names: np.ndarray, song_names: np.ndarray,
                     config: OnlineConfig, n_users: int) -> dict[str, Any]:
    """Reference and check: the first ``n_users`` users' events through ``Interactions.from_events``
    (exact, as the online state aggregates) vs :func:`aggregate` on the same events."""
    keep = log["user"] < n_users
    part = {k: v[keep] for k, v in log.items()}
    batch = EventBatch(user_names[part["user"]], song_names[part["song"]], part["kind"], part["ts"],
                       part["ms_played"])
    with stopwatch() as t_ref:
        exact = Interactions.from_events(batch, config)
    with stopwatch() as t_np:
        fast = aggregate(part, user_names, song_names, config)
    ek, ep, en = _sorted_rows(exact)
    fk, fp, fn = _sorted_rows(fast)
    same = bool(len(ek) == len(fk) and (ek == fk).all() and np.allclose(ep, fp, rtol=1e-9, atol=1e-12)
                and np.allclose(en, fn, rtol=1e-9, atol=1e-12))
    if not same:
        raise AssertionError("the numpy aggregation differs from Interactions.from_events on the check slice")
    return {"check_events": int(keep.sum()), "check_users": int(n_users), "from_events_s": t_ref[0],
            "aggregate_check_s": t_np[0], "aggregate_matches_from_events": same}


def _als(sizes: dict[str, Any]) -> dict[str, Any]:
    from implicit.als import AlternatingLeastSquares

    from online_models.als import train_als

    config = OnlineConfig()
    with stopwatch() as t_gen:
        log = synthetic_log(sizes["events"], sizes["users"], sizes["songs"], sizes["clusters"])
    user_names = np.array([f"user-{i:06d}" for i in range(sizes["users"])], dtype=object)
    song_names = np.array([f"song-{i:06d}" for i in range(sizes["songs"])], dtype=object)
    check = _check_aggregate(log, user_names, song_names, config, min(sizes["check_users"], sizes["users"]))
    with stopwatch() as t_agg:
        table = aggregate(log, user_names, song_names, config)
    per_user = np.bincount(np.unique(log["user"] * np.int64(sizes["songs"]) + log["song"]) // sizes["songs"])
    with stopwatch() as t_mat:
        mat, _, _ = table.matrix(config.alpha)

    # both run with the retrain job's threads (MUSICREC_TRAIN_THREADS, default all cores)
    cores = os.cpu_count() or 1
    openmp = load_settings().train.threads or cores
    ours: list[float] = []
    ref: list[float] = []
    artifact = None
    for _ in range(sizes["als_rounds"]):  # alternate so both see the same machine load
        with stopwatch() as t:
            artifact = train_als(table, config, num_threads=openmp)
        ours.append(t[0])
        with threadpool_limits(1, "blas"), stopwatch() as t:  # as train_als: implicit runs its own threads
            AlternatingLeastSquares(random_state=0, num_threads=openmp).fit(mat, show_progress=False)
        ref.append(t[0])
    assert artifact is not None
    if artifact.item_factors.shape != (mat.shape[1], config.factors) or not np.isfinite(artifact.item_factors).all():
        raise AssertionError(f"train_als returned item factors of shape {artifact.item_factors.shape}")
    defaults = AlternatingLeastSquares()
    f: dict[str, Any] = {
        "events": int(sizes["events"]), "users": int(mat.shape[0]), "songs": int(mat.shape[1]),
        "interactions": len(table), "skip_share": float((log["kind"] == SKIP).mean()),
        "max_songs_per_user": int(per_user.max()), "generate_s": t_gen[0],
        "als_aggregate_s": t_agg[0], "als_matrix_s": t_mat[0],
        "als_1m_s": float(np.median(ours)), "implicit_als_1m_s": float(np.median(ref)),
        "als_1m_runs_s": ours, "implicit_als_1m_runs_s": ref,
        "train_threads": openmp, "cores": cores,
        "als_params": {"factors": config.factors, "iterations": config.iterations,
                       "regularization": config.regularization, "alpha": config.alpha},
        "implicit_params": {"factors": defaults.factors, "iterations": defaults.iterations,
                            "regularization": defaults.regularization, "alpha": defaults.alpha},
        **check,
    }
    f["ratio"] = f["als_1m_s"] / f["implicit_als_1m_s"]
    f["retrain_1m_s"] = f["als_aggregate_s"] + f["als_1m_s"]
    f["aggregate_events_per_s"] = f["events"] / f["als_aggregate_s"]
    f["from_events_events_per_s"] = f["check_events"] / f["from_events_s"]
    f["aggregate_vs_from_events"] = f["aggregate_events_per_s"] / f["from_events_events_per_s"]
    f["target"] = {"retrain_s_below": ALS_TARGET_S, "met": f["retrain_1m_s"] < ALS_TARGET_S}
    return f


# --------------------------------------------------------------------------------- Last.fm

def lastfm_events(users: int | None) -> tuple[EventBatch, Path]:
    """The Last.fm HetRec events (``import_lastfm``); with ``users``, only the first that many users."""
    from offline.eventfile import read_event_file
    from offline.importers import import_lastfm

    directory = shared_data() / LASTFM
    with tempfile.TemporaryDirectory(prefix="musicrec-bench-") as tmp:
        events, _ = read_event_file(import_lastfm(directory, tmp).events_path)
    if users is not None:
        events = events.take(np.isin(events.user_ids, np.unique(events.user_ids)[:users]))
    return events, directory


def _ncf_epochs(events: EventBatch, epochs: int) -> dict[str, Any]:
    """Seconds per epoch of each backend on identical work: same initial weights, same samples each
    epoch (``epoch_samples``), same learning rate; the order alternates epoch by epoch."""
    from online_models.ncf import load_backend
    from online_models.ncf_config import BACKENDS, NCFConfig
    from online_models.ncf_train import epoch_samples
    from online_models.ncf_weights import init_weights
    from online_models.ranking import seen_keys

    config = NCFConfig()
    table = Interactions.from_events(events, OnlineConfig())
    users, u_idx = np.unique(table.user_ids, return_inverse=True)
    songs, s_idx = np.unique(table.song_ids, return_inverse=True)
    n_users, n_items = len(users), len(songs)
    is_pos, is_skip = table.pos > table.neg, table.neg > table.pos
    pos = seen_keys(u_idx[is_pos], s_idx[is_pos], n_items)
    skip = np.setdiff1d(seen_keys(u_idx[is_skip], s_idx[is_skip], n_items), pos)
    weights = init_weights(n_users, n_items, config, np.random.default_rng(0))
    nets = {b: load_backend(b, weights, config) for b in BACKENDS}
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {b: {"epoch_s": [], "loss": []} for b in BACKENDS}
    pairs = 0
    for epoch in range(epochs):
        u, i, y = epoch_samples(rng, pos // n_items, pos % n_items, skip // n_items, skip % n_items,
                                n_users, n_items, config.negatives, config.skip_share)
        pairs = len(u)
        for b in BACKENDS if epoch % 2 == 0 else BACKENDS[::-1]:
            with stopwatch() as t:
                loss = nets[b].train_epoch(u, i, y, config.learning_rate, lambda _n: None)
            out[b]["epoch_s"].append(t[0])
            out[b]["loss"].append(loss)
    for b in BACKENDS:
        if not all(np.isfinite(out[b]["loss"])):
            raise AssertionError(f"NeuMF/{b} training loss is not finite: {out[b]['loss']}")
        out[b]["s_per_epoch"] = float(np.median(out[b]["epoch_s"]))
        out[b]["pairs_per_s"] = pairs / out[b]["s_per_epoch"]
    return {"ncf_users": n_users, "ncf_songs": n_items, "ncf_positives": len(pos), "ncf_skip_negatives": len(skip),
            "ncf_pairs_per_epoch": pairs, "ncf_batch_size": config.batch_size, "ncf_epochs": epochs,
            "ncf_torch_epoch_s": out["torch"]["s_per_epoch"], "ncf_mlx_epoch_s": out["mlx"]["s_per_epoch"],
            "ncf_mlx_vs_torch": out["mlx"]["s_per_epoch"] / out["torch"]["s_per_epoch"], "ncf": out}


def _loo(events: EventBatch, sizes: dict[str, Any]) -> dict[str, Any]:
    from offline.loo import evaluate_loo
    from online_models.ncf_config import NCFConfig

    ncf = NCFConfig() if sizes["loo_ncf_epochs"] is None else replace(NCFConfig(), epochs=sizes["loo_ncf_epochs"])
    with stopwatch() as t:
        result = evaluate_loo(events, LOO_MODELS, k=10, ncf_config=ncf)
    return {**result, "seconds": t[0], "ncf_max_epochs": ncf.epochs}


# ------------------------------------------------------------------------------------- run

def run(console: Console, quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    context = run_context()
    started = time.perf_counter()
    events, directory = lastfm_events(sizes["lastfm_users"])  # fails early when the data is missing
    figures: dict[str, Any] = {"quick": quick, "lastfm_dir": str(directory), "lastfm_events": len(events)}
    figures.update(_als(sizes))
    figures.update(_ncf_epochs(events, sizes["ncf_epochs"]))
    figures["loo"] = _loo(events, sizes)
    figures["total_s"] = time.perf_counter() - started
    figures.update(finish_context(context))
    _print(console, figures)
    return figures


def _print(console: Console, f: dict[str, Any]) -> None:
    ap, ip = f["als_params"], f["implicit_params"]
    threads = f"{f['train_threads']} training threads of {f['cores']} cores"
    print_table(
        console, f"train: ALS retrain, {f['events']:,} synthetic events "
                 f"({f['users']:,} users x {f['songs']:,} songs, {f['interactions']:,} user-song rows)",
        ["figure", "project", "reference", "ratio", "target"],
        [["aggregate, events/s", f["aggregate_events_per_s"], f["from_events_events_per_s"],
          f["aggregate_vs_from_events"], None],
         ["aggregate, s", f["als_aggregate_s"], None, None, None],
         ["train_als, s", f["als_1m_s"], f["implicit_als_1m_s"], f["ratio"], None],
         ["  Interactions.matrix, s", f["als_matrix_s"], None, None, None],
         ["retrain (aggregate + train_als), s", f["retrain_1m_s"], None, None, f"< {ALS_TARGET_S:g} s"]],
        caption=f"train_als: {ap['factors']} factors, {ap['iterations']} iterations, as the retrain job calls it "
                f"({threads}); reference: implicit AlternatingLeastSquares defaults ({ip['factors']} factors, "
                f"{ip['iterations']} iterations) on the same matrix, same threads. Aggregation: numpy vs "
                f"Interactions.from_events on {f['check_events']:,} events of the same log (identical table: "
                f"{'yes' if f['aggregate_matches_from_events'] else 'NO'}). Interactions.matrix is timed apart "
                "but is also part of train_als")
    t, m = f["ncf"]["torch"], f["ncf"]["mlx"]
    print_table(
        console, f"train: NeuMF epoch on Last.fm ({f['ncf_users']:,} users x {f['ncf_songs']:,} artists, "
                 f"{f['ncf_pairs_per_epoch']:,} pairs/epoch, batch {f['ncf_batch_size']})",
        ["backend", "s / epoch", "pairs / s", "per epoch s", "loss", "vs torch"],
        [["torch (1 thread)", t["s_per_epoch"], t["pairs_per_s"], " ".join(f"{s:.2f}" for s in t["epoch_s"]),
          " ".join(f"{v:.4f}" for v in t["loss"]), 1.0],
         ["mlx (cpu)", m["s_per_epoch"], m["pairs_per_s"], " ".join(f"{s:.2f}" for s in m["epoch_s"]),
          " ".join(f"{v:.4f}" for v in m["loss"]), f["ncf_mlx_vs_torch"]]],
        caption="same initial weights and samples per epoch; the backend that goes first alternates")
    loo = f["loo"]
    print_table(
        console, f"train: leave-last-out on Last.fm, {loo['users']:,} users: HR/NDCG vs 99 sampled negatives, "
                 "recall over the full catalog",
        ["model", "HR@10", "NDCG@10", "recall@10", "fit s"],
        [[name, m_["hr@10"], m_["ndcg@10"], m_["recall@10"], m_["fit_s"]] for name, m_ in loo["models"].items()],
        caption=f"{f['lastfm_events']:,} events; evaluation {loo['seconds']:.0f} s (NeuMF up to "
                f"{loo['ncf_max_epochs']} epochs, early stopping). Total {f['total_s']:.0f} s; peak RSS "
                f"{f['peak_rss_mb']:.0f} MiB ({f['peak_rss_source']}); load avg {f['load_avg_1m_start']} -> "
                f"{f['load_avg_1m_end']}")
