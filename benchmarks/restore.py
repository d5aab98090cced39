"""``musicrec bench restore``: what a worker restores when the group assigns it partitions.

For event logs of growing size (synthetic: ~25 events per user, Zipf-popular songs, imported without
Kafka so each event goes by its user's murmur2 partition over 8), a fresh worker process restores
either all 8 partitions (one worker: the reference, measured in the same run) or 4 of them (its
share when two workers split the topic), with an ALS version published. Each restore runs in its
own process, so its resident memory is that of one worker: the figures are restore seconds, wall and
CPU (the CPU time of the process, all threads: less moved by other work on a shared machine), the
DuckDB query's share (timed on its own just before), events read, users held and the resident memory
the restore added.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.common import finish_context, print_table, run_context

PARTITIONS = 8
EVENTS_PER_USER = 25
FULL = {"sizes": [100_000, 200_000, 400_000, 800_000]}
QUICK = {"sizes": [5_000]}
SHARES = {"all 8 (one worker)": list(range(PARTITIONS)), "4 of 8 (two workers)": list(range(PARTITIONS // 2))}


def synthetic_history(n: int, seed: int = 0) -> Any:
    from online_models.batch import EventBatch

    rng = np.random.default_rng(seed)
    users = max(n // EVENTS_PER_USER, 10)
    user_ids = np.array([f"user-{u:08d}" for u in rng.integers(0, users, n)], dtype=object)
    song_ids = np.array([f"song-{s:07d}" for s in rng.zipf(1.2, n) % 20_000], dtype=object)
    kinds = np.where(rng.random(n) < 0.1, "skip", "play").astype(object)
    ts = np.sort(rng.uniform(1.7e9, 1.7e9 + 86400 * 60, n))
    return EventBatch.from_columns(user_ids, song_ids, kinds, ts, None,
                                   np.array([f"e{i}" for i in range(n)], dtype=object))


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker process: build its parts, restore ``spec['partitions']``, report."""
    import gc

    from benchmarks.common import current_rss_mb
    from stream.redis_store import connect
    from stream.settings import load_settings
    from stream.worker.parts import WorkerParts
    from stream.worker.start import DAY_S, restore, restore_window_s

    settings = load_settings({"data_dir": spec["data_dir"], "redis_url": spec["redis_url"],
                              "redis_namespace": spec["namespace"], "partitions": PARTITIONS}, env={})
    parts = WorkerParts.build(settings, connect(spec["redis_url"]), worker_id="bench")
    gc.collect()
    before = current_rss_mb()
    # the log query alone, as the restore makes it (it also warms the page cache for the restore)
    started = time.perf_counter()
    parts.log.read_partitions(spec["partitions"], parts.holdings.key_partitions, restore_window_s(settings),
                              settings.stream.state_ttl * DAY_S)
    read_s = time.perf_counter() - started
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    events = restore(parts, set(spec["partitions"]))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    gc.collect()
    return {"seconds": seconds, "cpu_s": cpu_s, "read_s": read_s, "events": events, "users": len(parts.model.state),
            "rss_added_mb": current_rss_mb() - before, "version": parts.model.holder.version}


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.restore", json.dumps(spec)], capture_output=True,
                         text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"restore child failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(console: Console, quick: bool) -> dict[str, Any]:
    from offline.eventlog import EventLog
    from offline.retrain import retrain_als
    from stream.redis_store import RedisKeys, connect, version_registry
    from stream.services import EmbeddedServices
    from stream.settings import load_settings

    context = run_context()
    sizes = (QUICK if quick else FULL)["sizes"]
    rows, results = [], {}
    with EmbeddedServices(kafka=False) as services, tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        for n in sizes:
            data_dir = Path(tmp) / str(n)
            history = synthetic_history(n)
            log = EventLog(data_dir / "log")
            log.append(history)
            namespace = f"bench-restore-{n}"
            model = load_settings({"model.factors": 32}, env={}).model
            version = retrain_als(log, data_dir / "versions", model).version
            version_registry(connect(services.redis_url), RedisKeys(namespace), data_dir / "versions").publish(version)
            per_share = {}
            for label, partitions in SHARES.items():
                spec = {"data_dir": str(data_dir), "redis_url": services.redis_url, "namespace": namespace,
                        "partitions": partitions}
                got = _run_child(spec)
                per_share[label] = got
                rows.append([f"{n:,}", label, got["events"], got["users"], got["seconds"], got["cpu_s"],
                             got["read_s"], got["cpu_s"] / max(got["events"], 1) * 1e6, got["rss_added_mb"]])
            results[str(n)] = per_share
    print_table(console, "restore on assignment (one process per worker; ALS version published)",
                ["log events", "partitions restored", "events read", "users held", "restore s", "CPU s",
                 "log query s", "CPU µs/event", "RSS added MiB"], rows)
    return {"partitions": PARTITIONS, "events_per_user": EVENTS_PER_USER, "sizes": results,
            **finish_context(context)}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
