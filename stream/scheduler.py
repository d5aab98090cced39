"""Retrain runs and the scheduler loop next to the workers: train, gate, publish or refuse (logged)."""

from __future__ import annotations

import logging
import signal
import threading
import time

from rich.console import Console

from index_manager.artifacts import ArtifactError
from index_manager.song_index import IndexFailure
from offline.catalog import CatalogStore
from offline.errors import EngineUnavailable
from offline.eventlog import EventLog
from offline.retrain import RetrainResult, retrain
from stream.errors import ConfigError, ServiceUnavailable
from stream.redis_store import RedisKeys, connect_to, version_registry
from stream.settings import Settings

log = logging.getLogger("musicrec.retrain")


def run_retrain(settings: Settings, until: float | None = None, publish: bool = True,
                console: Console | None = None) -> RetrainResult:
    """One retrain: train, gate against the published version, then publish or record the refusal."""
    cfg = settings.stream
    registry = version_registry(connect_to(cfg), RedisKeys(cfg.redis_namespace), cfg.artifacts_dir) \
        if publish else None
    served = registry.published_artifact() if registry is not None else None
    result = retrain(EventLog(cfg.log_dir), cfg.artifacts_dir, settings.model, settings.train, settings.ncf,
                     served=served, until=until, catalog=CatalogStore(cfg.catalog_dir),
                     show_progress=console is not None, sasrec_config=settings.sasrec)
    d = result.decision
    how = settings.train.engine if settings.train.model == "als" else f"{settings.train.workers} process(es)"
    line = (f"trained {settings.train.model} ({how}) on {result.n_events} events in {result.seconds:.1f}s -> version "
            f"{result.version}; gate: {d.reason}")
    if console is not None:
        console.print(line)
        for name, figures in (("candidate", d.candidate), ("served", d.served)):
            if figures:
                console.print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "users"))
    if registry is None:
        return result
    if d.publish:
        registry.publish(result.version, result.artifact.metrics.get("gate"))
        if console is not None:
            console.print(f"published {result.version}")
    else:
        log.warning("refused version %s: %s", result.version, d.reason)
        registry.refuse(result.version, d.as_dict())
        if console is not None:
            console.print(f"[yellow]refused {result.version}; still serving {served.version if served else 'none'}[/]")
    return result


def run_scheduled(settings: Settings, period_s: float, until: float | None = None, publish: bool = True,
                  console: Console | None = None) -> None:
    """Retrain every ``period_s`` until SIGINT/SIGTERM; a failed run is logged and the next one still runs."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        started = time.monotonic()
        try:
            run_retrain(settings, until=until, publish=publish, console=console)
        except (ArtifactError, IndexFailure, ConfigError, ServiceUnavailable, EngineUnavailable, OSError,
                ValueError) as exc:
            log.error("retrain failed, will try again in %.0fs: %s", period_s, exc)
            if console is not None:
                console.print(f"[red]retrain failed:[/] {exc}")
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))
