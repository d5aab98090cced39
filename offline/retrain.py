"""A retrain job: event log -> training data (SQL) -> model -> versioned artifact on disk."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from index_manager.artifacts import ModelArtifact, save_artifact
from offline.catalog import CatalogStore
from offline.eventlog import EventLog
from online_models.als import train_als
from online_models.config import OnlineConfig
from online_models.content import attach_projection


@dataclass(frozen=True)
class RetrainResult:
    version: str
    artifact: ModelArtifact
    seconds: float
    n_events: int


def retrain_als(log: EventLog, artifacts_dir: str | Path, config: OnlineConfig, until: float | None = None,
                since: float | None = None, show_progress: bool = False,
                catalog: CatalogStore | None = None) -> RetrainResult:
    """Train ALS on the log window (since, until] and write it as a new version (not yet published).
    With a catalog that has content features, the version also carries the new-song projection."""
    t0 = time.perf_counter()
    span = log.range(until)
    if span.n_events == 0:
        raise ValueError(f"the event log at {log.root} has no events to train on")
    interactions = log.interactions(config, since=since, until=until)
    artifact = train_als(interactions, config, show_progress=show_progress,
                         trained_on={"since": since, "until": until, "ts_min": span.ts_min,
                                     "ts_max": span.ts_max, "n_events": span.n_events})
    if catalog is not None:
        rows = catalog.read()
        attach_projection(artifact, rows.song_ids, rows.features, rows.genres, config.new_song_norm_quantile)
    version = save_artifact(artifacts_dir, artifact)
    return RetrainResult(version, artifact, time.perf_counter() - t0, span.n_events)
