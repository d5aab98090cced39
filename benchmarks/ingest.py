"""``musicrec bench ingest``: events/s through the whole worker next to a bare Faust agent.

Both consume the same pre-loaded topic (each in its own consumer group) with the same batch size and
window; each rate counts from the end of its first batch to the end of its last, so neither includes
the consumer group join. The worker's path: validate -> event log -> fold-in -> FAISS -> explanations
-> one Redis MSET per batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from rich.console import Console

from benchmarks.common import finish_context, print_table, run_context
from benchmarks.live import fresh_events, live_setup, produce, start_worker, stop_process, wait_stats
from stream.settings import to_env

TARGET_RATIO = 0.7


def run(console: Console, quick: bool) -> dict[str, Any]:
    context = run_context()
    n = 6_000 if quick else 60_000
    with live_setup(console, partitions=4) as live:
        events = fresh_events(live.replay, n, "ingest")
        produced_per_s = produce(live, events)

        out = live.workdir / "bare.json"
        env = {**os.environ, **to_env(live.settings), "BARE_EXPECT": str(n), "BARE_OUT": str(out),
               "MUSICREC_APP_ID": live.settings.stream.app_id + "-bare"}
        bare = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_faust"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            bare.wait(timeout=300)
        finally:
            stop_process(bare)
        b = json.loads(out.read_text())
        bare_rate = (b["count"] - b["first_count"]) / max(b["last_at"] - b["first_at"], 1e-9)

        worker = start_worker(live)
        try:
            s = wait_stats(live, worker, lambda s: s["events"] >= n, 600, "the worker to consume the backlog")
            time.sleep(0.1)
        finally:
            stop_process(worker)
        worker_rate = (s["events"] - s["events_at_first_batch"]) / max(s["last_batch_at"] - s["first_batch_at"], 1e-9)
    figures: dict[str, Any] = {
        "events": n, "events_per_s": worker_rate, "bare_faust_events_per_s": bare_rate,
        "ratio": worker_rate / bare_rate, "target_ratio": TARGET_RATIO, "producer_events_per_s": produced_per_s,
        "batch_size": live.settings.stream.batch_size, "batch_within_s": live.settings.stream.batch_within,
        "worker_batches": s["batches"], "worker_users_written": s["users_written"],
    }
    figures.update(finish_context(context))
    print_table(console, f"ingest: {n:,} Last.fm events, embedded broker, 1 worker",
                ["path", "events/s", "vs bare Faust", "target"],
                [["worker: validate -> log -> fold-in -> FAISS -> Redis", worker_rate, figures["ratio"],
                  f">= {TARGET_RATIO}"],
                 ["bare Faust take_events (reference)", bare_rate, 1.0, None],
                 ["kafka-python producer (pre-load)", produced_per_s, produced_per_s / bare_rate, None]],
                caption=f"batches of <= {figures['batch_size']} within {figures['batch_within_s']} s; "
                        f"peak RSS of this process {figures['peak_rss_mb']:.0f} MiB; "
                        f"load {figures['load_avg_1m_start']} -> {figures['load_avg_1m_end']}")
    return figures
