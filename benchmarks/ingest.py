"""``musicrec bench ingest``: events/s through the whole worker next to a bare Faust agent.

The worker and the bare agent consume the same pre-loaded topic (each in its own consumer group) with
the same batch size and window; each rate counts from the end of its first batch to the end of its
last, so none includes the consumer group join. The worker's path: validate -> event log -> fold-in
-> FAISS -> explanations -> one Redis MSET per batch. The physical reference is a plain aiokafka
consumer reading the same topic with ``getmany`` (no group, every partition assigned).

The worker runs twice in one process. Started on the backlog ("cold"), it also writes its start-up
lists meanwhile (a list for every user its log knows, a one-off that bare Faust does not do). Then,
once those are written, it is paused (SIGSTOP), a second backlog of the same size is produced, and
it is resumed (SIGCONT): that steady-state run is the headline rate and ``ratio``, counted from the
resume to its last batch. Its CPU per event is the process CPU time (all threads: Faust's consumer
thread too) from the resume to its last batch. ``--quick`` pauses the worker without waiting for
its start-up lists.
The worker runs its own fetch loop (``stream.worker.delivery``: no asyncio tasks per message) and
takes whole fetches (``stream.worker.fetches``: no Faust event, channel or stream per message); the
ratio is against Faust as shipped, and the bench also runs the bare agent with the worker's loop
and whole fetches, so what they gain and what the worker's own work costs can be told apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from benchmarks.common import finish_context, print_table, run_context
from benchmarks.live import (
    fresh_events,
    live_setup,
    produce,
    stage_cell,
    stage_ms,
    start_worker,
    stop_process,
    wait_stats,
)
from stream.catalog_feed import partitions_of
from stream.kafka_config import aiokafka_options
from stream.settings import StreamConfig, to_env

TARGET_RATIO = 0.8  # issue 14 (was 0.7)


async def raw_getmany(cfg: StreamConfig, expect: int, timeout: float = 300.0) -> float:
    """Events/s of a bare aiokafka consumer reading ``expect`` events of the events topic with
    ``getmany``, from the end of its first non-empty fetch to the end of its last."""
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=max(1, int(cfg.fetch_max_wait * 1000)), **aiokafka_options(cfg))
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, cfg.events_topic)
        consumer.assign([TopicPartition(cfg.events_topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        count, first_count, first_at, last_at = 0, 0, 0.0, 0.0
        deadline = time.monotonic() + timeout
        while count < expect and time.monotonic() < deadline:
            records = await consumer.getmany(timeout_ms=500, max_records=cfg.batch_size)
            got = sum(len(r) for r in records.values())
            if got:
                count += got
                last_at = time.perf_counter()
                if not first_at:
                    first_at, first_count = last_at, count
        if count < expect:
            raise RuntimeError(f"the raw consumer read {count} of {expect} events in {timeout:.0f} s")
        return (count - first_count) / max(last_at - first_at, 1e-9)
    finally:
        await consumer.stop()


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bare_faust(live: Any, n: int, inline: bool) -> float:
    """Events/s of the bare Faust agent (its own consumer group), with Faust's fetch loop or the worker's."""
    tag = "-bare-inline" if inline else "-bare"
    out = live.workdir / f"{tag[1:]}.json"
    env = {**os.environ, **to_env(live.settings), "BARE_EXPECT": str(n), "BARE_OUT": str(out),
           "MUSICREC_APP_ID": live.settings.stream.app_id + tag, "BARE_INLINE": "1" if inline else "0"}
    bare = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_faust"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bare.wait(timeout=300)
    finally:
        stop_process(bare)
    b = json.loads(out.read_text())
    return float((b["count"] - b["first_count"]) / max(b["last_at"] - b["first_at"], 1e-9))


def run(console: Console, quick: bool) -> dict[str, Any]:
    context = run_context()
    n = 6_000 if quick else 60_000
    # a long session: the worker may sit paused while the second backlog is produced
    with live_setup(console, partitions=4, session_timeout=60.0) as live:
        events = fresh_events(live.replay, n, "ingest")
        produced_per_s = produce(live, events)

        bare_rate = _bare_faust(live, n, inline=False)
        bare_inline_rate = _bare_faust(live, n, inline=True)
        raw_rate = asyncio.run(raw_getmany(live.settings.stream, n))

        worker = start_worker(live)
        try:
            cold = wait_stats(live, worker, lambda s: s["events"] >= n, 600, "the worker to consume the backlog")
            if not quick:  # (a smoke run does not wait the one-off out)
                wait_stats(live, worker, lambda s: s["lists_backfilled"] > 0 and s["backfill_pending"] == 0, 600,
                           "the worker's start-up lists")
            # the counters the steady run starts from: the backlog is done, so the next publish holds them
            asked = time.time()
            settled = wait_stats(live, worker, lambda s: s["events"] >= n and s["updated_at"] > asked, 30,
                                 "the worker's counters after the backlog")
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                produce(live, fresh_events(live.replay, n, "ingest-steady"))
            finally:
                cpu_at_resume = _process_cpu_s(worker.pid)  # stopped: its CPU time stands still
                resumed_at = time.time()
                os.kill(worker.pid, signal.SIGCONT)
            s = wait_stats(live, worker, lambda s: s["events"] >= 2 * n, 600,
                           "the worker to consume the second backlog")
            time.sleep(0.1)
        finally:
            stop_process(worker)
        cold_rate = (cold["events"] - cold["events_at_first_batch"]) / max(
            cold["last_batch_at"] - cold["first_batch_at"], 1e-9)
        worker_rate = (s["events"] - n) / max(s["last_batch_at"] - resumed_at, 1e-9)
        per_cpu_s = (s["events"] - n) / max(s["cpu_at_last_batch"] - cpu_at_resume, 1e-9)
    figures: dict[str, Any] = {
        "events": n, "events_per_s": worker_rate, "bare_faust_events_per_s": bare_rate,
        "ratio": worker_rate / bare_rate, "target_ratio": TARGET_RATIO, "producer_events_per_s": produced_per_s,
        "raw_aiokafka_events_per_s": raw_rate, "bare_faust_inline_events_per_s": bare_inline_rate,
        "ratio_to_inline": worker_rate / bare_inline_rate, "worker_events_per_cpu_s": per_cpu_s,
        "cold_events_per_s": cold_rate, "cold_ratio": cold_rate / bare_rate,
        "worker_cores_used": worker_rate / per_cpu_s,
        "batch_size": live.settings.stream.batch_size, "batch_within_s": live.settings.stream.batch_within,
        "worker_batches": s["batches"], "worker_users_written": s["users_written"],
        "worker_ms_per_batch": stage_ms(settled, s),
    }
    figures.update(finish_context(context))
    print_table(console, f"ingest: {n:,} Last.fm events, embedded broker, 1 worker",
                ["path", "events/s", "vs bare Faust", "target"],
                [["worker: validate -> log -> fold-in -> FAISS -> Redis", worker_rate, figures["ratio"],
                  f">= {TARGET_RATIO}"],
                 ["  same, per CPU-second of the worker process (all threads)", per_cpu_s, per_cpu_s / bare_rate,
                  None],
                 ["  same, started on the backlog (its start-up lists meanwhile)", cold_rate, figures["cold_ratio"],
                  None],
                 ["bare Faust take_events (reference)", bare_rate, 1.0, None],
                 ["  same, with the worker's fetch loop and whole fetches", bare_inline_rate,
                  bare_inline_rate / bare_rate, None],
                 ["raw aiokafka getmany, no group (physical reference)", raw_rate, raw_rate / bare_rate, None],
                 ["kafka-python producer (pre-load)", produced_per_s, produced_per_s / bare_rate, None]],
                caption=f"batches of <= {figures['batch_size']} within {figures['batch_within_s']} s; steady batches "
                        f"{stage_cell(figures['worker_ms_per_batch'])} ms (all = parse + log + learn + lists); "
                        f"peak RSS of this process {figures['peak_rss_mb']:.0f} MiB; "
                        f"load {figures['load_avg_1m_start']} -> {figures['load_avg_1m_end']}")
    return figures
