"""A retrain job: event log -> training data (SQL) -> model -> evaluation gate -> versioned artifact.

Every candidate is written as a version (so a refused one can be inspected); whether it may be
published is the gate's decision, recorded in its manifest's ``metrics.gate``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index_manager.artifacts import ModelArtifact, save_artifact
from index_manager.keys import song_keys
from offline.catalog import CatalogStore
from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.gate import Decision, decide, make_slice, version_metrics
from online_models.als import train_als
from online_models.config import OnlineConfig
from online_models.content import attach_projection
from online_models.interactions import Interactions
from online_models.ncf_config import NCFConfig
from online_models.ncf_train import train_ncf
from online_models.sasrec_spec import SASRecConfig
from online_models.sasrec_train import sasrec_artifact, train_sasrec
from online_models.sequences import RecentPlays


@dataclass(frozen=True)
class RetrainResult:
    version: str
    artifact: ModelArtifact
    seconds: float
    n_events: int
    decision: Decision


def retrain(log: EventLog, artifacts_dir: str | Path, config: OnlineConfig, train: TrainConfig | None = None,
            ncf_config: NCFConfig | None = None, served: ModelArtifact | None = None, until: float | None = None,
            catalog: CatalogStore | None = None, show_progress: bool = False, k: int = 10,
            sasrec_config: SASRecConfig | None = None) -> RetrainResult:
    """Train on the log window minus each user's held-out song, gate against ``served`` on that
    slice, write the candidate as a new version and return the decision (publishing is the caller's).
    ALS and NeuMF train on the aggregated interactions; SASRec on the deduplicated events in time order."""
    train = train or TrainConfig()
    t0 = time.perf_counter()
    if train.engine == "spark":
        if train.model != "als":
            raise ValueError(f"the spark engine trains ALS only, not {train.model!r}")
        return _retrain_spark(log, artifacts_dir, config, train, served, until, catalog, k, t0)
    span = log.range(until)
    if span.n_events == 0 or span.ts_max is None:
        raise ValueError(f"the event log at {log.root} has no events to train on")
    since = span.ts_max - train.window_days * 86400.0 if train.window_days > 0 else None
    users, songs = _gate_users(*log.holdout(since, until), train, config)
    history = log.interactions(config, since=since, until=until, exclude_holdout=len(users) > 0)
    trained_on = {"since": since, "until": until, "ts_min": span.ts_min, "ts_max": span.ts_max,
                  "n_events": span.n_events, "held_out_users": len(users)}
    if train.model in ("ncf", "sasrec") and train.workers > 1:
        from offline.ddp import train_distributed  # starts torchrun; imports torch.distributed

        data = history if train.model == "ncf" else log.read(since, until, exclude_holdout=len(users) > 0)
        model_config = (ncf_config or NCFConfig()) if train.model == "ncf" else (sasrec_config or SASRecConfig())
        artifact = train_distributed(train.model, train.workers, data, model_config, trained_on, show_progress)
    elif train.model == "ncf":
        artifact = train_ncf(history, ncf_config or NCFConfig(), backend=train.backend,
                             show_progress=show_progress, trained_on=trained_on)
    elif train.model == "sasrec":
        events = log.read(since, until, exclude_holdout=len(users) > 0)
        model = train_sasrec(events, sasrec_config or SASRecConfig(), train.backend, show_progress=show_progress)
        artifact = sasrec_artifact(model, events, trained_on)
    else:
        artifact = train_als(history, config, show_progress=show_progress, trained_on=trained_on,
                             num_threads=train.threads or os.cpu_count() or 1)
    if artifact.kind == "ncf":
        # fold-in of online users needs the same weighting the ALS path uses
        artifact.params.update(alpha=config.alpha, regularization=config.regularization)
    return _gate_and_save(log, artifacts_dir, artifact, history, users, songs, config, train, served, since, until,
                          catalog, k, t0, span.n_events)


def _gate_users(users: np.ndarray, songs: np.ndarray, train: TrainConfig, config: OnlineConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """The held-out pairs the gate scores: all of them, or a seeded sample of ``gate_users``."""
    if len(users) > train.gate_users:
        keep = np.sort(np.random.default_rng(config.seed).choice(len(users), train.gate_users, replace=False))
        users, songs = users[keep], songs[keep]
    return users, songs


def _retrain_spark(log: EventLog, artifacts_dir: str | Path, config: OnlineConfig, train: TrainConfig,
                   served: ModelArtifact | None, until: float | None, catalog: CatalogStore | None, k: int,
                   t0: float) -> RetrainResult:
    """ALS on Spark over the log's Parquet files (``offline.spark_als``), then the same gate and version."""
    from offline.spark_als import spark_session, train_spark_als

    with spark_session(train.spark_master) as spark:
        out = train_spark_als(spark, log.root, config, since_days=train.window_days, until=until,
                              choose_gate_users=lambda u, s: _gate_users(u, s, train, config))
    span = out.span
    since = span.ts_max - train.window_days * 86400.0 if train.window_days > 0 and span.ts_max else None
    out.artifact.trained_on.update(since=since, until=until, ts_min=span.ts_min, ts_max=span.ts_max,
                                   n_events=span.n_events, held_out_users=len(out.holdout_users))
    return _gate_and_save(log, artifacts_dir, out.artifact, out.gate_history, out.holdout_users,
                          out.holdout_songs, config, train, served, since, until, catalog, k, t0, span.n_events,
                          song_catalog=out.catalog)


def _gate_and_save(log: EventLog, artifacts_dir: str | Path, artifact: ModelArtifact, history: Interactions,
                   users: np.ndarray, songs: np.ndarray, config: OnlineConfig, train: TrainConfig,
                   served: ModelArtifact | None, since: float | None, until: float | None,
                   catalog: CatalogStore | None, k: int, t0: float, n_events: int,
                   song_catalog: np.ndarray | None = None) -> RetrainResult:
    """Attach the new-song projection, gate ``artifact`` against ``served`` on the held-out slice and
    write it as a version; ``history`` needs the training rows of the slice's users only."""
    if catalog is not None:
        rows = catalog.read()
        attach_projection(artifact, rows.song_ids, rows.features, rows.genres, config.new_song_norm_quantile)
    sequences = None
    if "sasrec" in (artifact.kind, served.kind if served is not None else None):
        sequences = _latest_plays(log, users, config.recent_plays, since, until)
    try:
        data = make_slice(history, users, songs, seed=config.seed, sequences=sequences, catalog=song_catalog)
    except ValueError as exc:
        data = None
        decision = Decision(True, f"not evaluated ({exc}); published on trust", {})
    if data is not None and len(users):
        candidate = version_metrics(artifact, data, config, k)
        served_metrics = version_metrics(served, data, config, k) if served is not None else None
        decision = decide(candidate, served_metrics, train.gate_tolerance, k)
    elif data is not None:
        decision = Decision(True, "no user has two distinct songs yet: nothing to evaluate", {})
    artifact.metrics["gate"] = dict(decision.as_dict(), served_version=served.version if served else None,
                                    tolerance=train.gate_tolerance)
    version = save_artifact(artifacts_dir, artifact)
    return RetrainResult(version, artifact, time.perf_counter() - t0, n_events, decision)


def _latest_plays(log: EventLog, users: np.ndarray, n: int, since: float | None, until: float | None
                  ) -> np.ndarray:
    """(U, n) keys of each gate user's latest training plays in order, as the worker's online state
    holds them (``OnlineState.recent``): what a sequence model is scored on."""
    play_users, play_songs = log.latest_plays(n, since, until, exclude_holdout=len(users) > 0)
    recent = RecentPlays(n)
    wanted = np.isin(play_users, users)
    recent.update(play_users[wanted], song_keys(play_songs[wanted]))
    return recent.gather(users)


def retrain_als(log: EventLog, artifacts_dir: str | Path, config: OnlineConfig, until: float | None = None,
                show_progress: bool = False, catalog: CatalogStore | None = None) -> RetrainResult:
    """ALS retrain with the default gate settings and nothing served (tests, demo)."""
    return retrain(log, artifacts_dir, config, TrainConfig(), until=until, catalog=catalog,
                   show_progress=show_progress)
