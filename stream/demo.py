"""``musicrec demo``: the whole system on real data, on services started from pip, in a few minutes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from offline.eventfile import read_event_file
from offline.eventlog import EventLog
from offline.importers import import_lastfm
from offline.retrain import retrain_als
from online_models.batch import EventBatch
from stream.errors import ServiceUnavailable
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RecsClient, RedisKeys, connect, version_registry
from stream.replay import replay
from stream.settings import Settings, load_settings, to_env, with_endpoints
from stream.worker.stats import read_stats


@contextlib.contextmanager
def endpoints(settings: Settings, console: Console) -> Iterator[tuple[str, str]]:
    """The configured Kafka/Redis, or embedded ones when neither KAFKA_BOOTSTRAP nor REDIS_URL is set."""
    cfg = settings.stream
    if cfg.kafka_bootstrap and cfg.redis_url:
        yield cfg.kafka_bootstrap, cfg.redis_url
        return
    if cfg.kafka_bootstrap or cfg.redis_url:
        raise ServiceUnavailable("set both KAFKA_BOOTSTRAP and REDIS_URL, or neither (embedded services)")
    from stream.services import EmbeddedServices

    with EmbeddedServices() as services:
        console.print(f"[dim]embedded Kafka (tansu) at {services.kafka_bootstrap}, "
                      f"redis-server at {services.redis_url}[/]")
        yield services.kafka_bootstrap, services.redis_url


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``musicrec worker`` in a child process, with exactly these settings."""
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"],
                                env=dict(os.environ, **to_env(settings)), stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            raise ServiceUnavailable(f"the worker exited ({proc.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(0.25)
    raise ServiceUnavailable(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pick_users(train: EventBatch, rest: EventBatch, n: int) -> np.ndarray:
    """Users with a training history and the most new events in the replayed part."""
    known = np.isin(rest.user_ids, np.unique(train.user_ids))
    users, counts = np.unique(rest.user_ids[known], return_counts=True)
    return users[np.argsort(-counts, kind="stable")[:n]]


def run_demo(data_dir: Path, rate: float = 3000.0, train_fraction: float = 0.8, show_users: int = 3,
             console: Console | None = None) -> dict[str, float]:
    console = console or Console()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="musicrec-demo-") as tmp:
        base = load_settings({"data_dir": tmp, "session_timeout": 6.0})
        with endpoints(base, console) as (kafka, redis_url):
            settings = with_endpoints(base, kafka, redis_url)
            cfg = settings.stream
            console.rule("1. import Last.fm HetRec 2011")
            imp = import_lastfm(data_dir, Path(tmp) / "imports")
            names = dict(zip(*(pq.read_table(imp.catalog_path, columns=["song_id", "title"]).column(c)
                               .to_pylist() for c in ("song_id", "title")), strict=True))
            events = read_event_file(imp.events_path)[0].sorted_by_time()
            cut_ts = events.ts[int(train_fraction * len(events)) - 1]
            train, rest = events.take(events.ts <= cut_ts), events.take(events.ts > cut_ts)
            console.print(f"{len(events)} dated engagements of {imp.n_users} users; training on "
                          f"{len(train)} up to {time.strftime('%Y-%m-%d', time.gmtime(cut_ts))}, "
                          f"replaying {len(rest)} through Kafka")

            console.rule("2. train ALS on the first part of the log and publish it")
            log = EventLog(cfg.log_dir)
            log.append(train)
            result = retrain_als(log, cfg.artifacts_dir, settings.model)
            redis = connect(redis_url)
            keys = RedisKeys(cfg.redis_namespace)
            version_registry(redis, keys, cfg.artifacts_dir).publish(result.version)
            console.print(f"version {result.version}: {result.artifact.trained_on['n_users']} users x "
                          f"{result.artifact.trained_on['n_songs']} artists, {result.seconds:.1f}s")

            console.rule("3. start a worker")
            ensure_topics(cfg)
            log_path = Path(tmp) / "worker.log"
            proc = start_worker(settings, log_path)
            try:
                wait_for(lambda: any(s.get("version") == result.version for s in read_stats(redis, keys)),
                         120, "the worker to load the model", proc, log_path)
                client = RecsClient(redis_url, cfg.redis_namespace, client=redis)
                chosen = pick_users(train, rest, show_users)
                before = dict(zip(chosen, client.get_many(list(chosen), 5), strict=True))

                console.rule(f"4. replay {len(rest)} events through Kafka at {rate:.0f}/s")
                with EventProducer(cfg) as producer:
                    sent = replay(producer, rest, rate).sent
                t_sent = time.perf_counter()
                wait_for(lambda: sum(s.get("events", 0) for s in read_stats(redis, keys)) >= sent,
                         180, "the worker to process the replay", proc, log_path)
                drain_s = time.perf_counter() - t_sent

                console.rule("5. what changed")
                after = dict(zip(chosen, client.get_many(list(chosen), 5), strict=True))
                for user in chosen:
                    new = rest.song_ids[rest.user_ids == user]
                    table = Table(title=f"user {user}: {len(new)} new events, e.g. "
                                  + ", ".join(names.get(s, s) for s in new[:4]))
                    table.add_column("before (served at the training cut)")
                    table.add_column("after the replay")
                    b, a = before[user], after[user]
                    for i in range(5):
                        table.add_row(names.get(b.song_ids[i], "") if b and i < len(b.items) else "",
                                      names.get(a.song_ids[i], "") if a and i < len(a.items) else "")
                    console.print(table)
                touched = np.unique(rest.user_ids)
                values = client.get_many(list(touched), 1)
                freshness = np.array([v.updated_at - v.last_event["produced_at"] for v in values
                                      if v is not None and v.last_event], dtype=np.float64) * 1000
                figures = {"events": float(sent), "users": float(len(freshness)),
                           "freshness_p50_ms": float(np.percentile(freshness, 50)),
                           "freshness_p99_ms": float(np.percentile(freshness, 99)),
                           "drain_s": drain_s, "total_s": time.perf_counter() - t_start}
                console.print(f"event -> Redis freshness over the last event of {len(freshness)} users: "
                              f"p50 {figures['freshness_p50_ms']:.0f} ms, p99 {figures['freshness_p99_ms']:.0f} ms "
                              f"(replayed at {rate:.0f} events/s)")
            finally:
                stop_process(proc)
    console.print(f"demo finished in {time.perf_counter() - t_start:.0f}s")
    return figures
