"""Retrain runs and the scheduler loop next to the workers: train, gate, publish or refuse (logged)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

from rich.console import Console

from index_manager.artifacts import ModelArtifact, load_artifact
from index_manager.errors import ArtifactError, MusicrecError
from offline.catalog import CatalogStore
from offline.eventlog import EventLog
from offline.retrain import RetrainResult, retrain
from stream.publish import publish_version, published_version
from stream.redis_store import RedisKeys, connect, translate_errors
from stream.settings import Settings

log = logging.getLogger("musicrec.retrain")


def served_artifact(settings: Settings, client: object, keys: RedisKeys) -> ModelArtifact | None:
    version = published_version(client, keys)  # type: ignore[arg-type]
    if version is None:
        return None
    try:
        return load_artifact(settings.stream.artifacts_dir, version)
    except ArtifactError as exc:
        # the gate then compares with nothing; the served version's own problem is reported, not hidden
        log.error("served version %s cannot be loaded for the gate: %s", version, exc)
        return None


def run_retrain(settings: Settings, until: float | None = None, publish: bool = True,
                console: Console | None = None) -> RetrainResult:
    cfg = settings.stream
    client = connect(cfg.redis_url) if publish else None
    keys = RedisKeys(cfg.redis_namespace)
    served = served_artifact(settings, client, keys) if client is not None else None
    result = retrain(EventLog(cfg.log_dir), cfg.artifacts_dir, settings.model, settings.train, settings.ncf,
                     served=served, until=until, catalog=CatalogStore(cfg.catalog_dir),
                     show_progress=console is not None)
    d = result.decision
    line = (f"trained {settings.train.model} on {result.n_events} events in {result.seconds:.1f}s -> version "
            f"{result.version}; gate: {d.reason}")
    if console is not None:
        console.print(line)
        for name, figures in (("candidate", d.candidate), ("served", d.served)):
            if figures:
                console.print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "users"))
    if client is None:
        return result
    if d.publish:
        publish_version(client, keys, result.version, result.artifact.metrics.get("gate"))
        if console is not None:
            console.print(f"published {result.version}")
    else:
        log.warning("refused version %s: %s", result.version, d.reason)
        record = json.dumps({"version": result.version, "refused_at": time.time(), "gate": d.as_dict()})
        with translate_errors("recording a refused version"):
            client.lpush(keys.model_history(), record)
            client.ltrim(keys.model_history(), 0, 99)
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
        except (MusicrecError, ValueError) as exc:
            log.error("retrain failed, will try again in %.0fs: %s", period_s, exc)
            if console is not None:
                console.print(f"[red]retrain failed:[/] {exc}")
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))
