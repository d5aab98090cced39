"""Merging the event log's segments: one per worker micro-batch adds up to thousands an hour.

Readers deduplicate by ``event_id``, so a crash between writing a merged segment and removing its
parts leaves duplicates that no reader sees.
"""

from __future__ import annotations

import os
import time
from contextlib import closing

import pyarrow as pa
import pyarrow.parquet as pq

from offline.event_table import SCHEMA, conform
from offline.eventlog import EventLog, safe_writer


def compact_own(log: EventLog, writer: str, min_segments: int = 256, small_bytes: int = 16 << 20) -> int:
    """Merge this writer's small segments (one per micro-batch) into one, so the log stays a few
    files per hour instead of one per batch; returns how many were merged. Only ``writer`` writes
    these, so this may run next to that writer's batches and next to every reader."""
    own = [p for p in log.root.glob(f"seg-*-w{safe_writer(writer)}-*.parquet")
           if p.stat().st_size < small_bytes] if log.root.is_dir() else []
    if len(own) < min_segments:
        return 0
    own.sort()
    name = f"seg-{own[-1].name[4:24]}-w{safe_writer(writer)}-merged{len(own)}.parquet"
    tmp = log.root / f".{name}.tmp"
    # one segment in memory at a time, and the freed buffers handed back: this runs inside a
    # long-lived worker, whose resident memory must not ratchet up with every merge
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as out:
        for p in own:
            out.write_table(conform(pq.read_table(p)))
    pa.default_memory_pool().release_unused()
    os.replace(tmp, log.root / name)
    for p in own:
        if p.name != name:
            p.unlink(missing_ok=True)
    return len(own)

def compact(log: EventLog, min_segments: int = 32) -> int:
    """Merge all current segments into one (deduplicated); returns how many were merged."""
    segs = log.segments()
    if len(segs) < min_segments:
        return 0
    with closing(log.connect()) as con:
        table = con.sql("SELECT user_id, song_id, event, ts, ms_played, event_id, ingested_at, kafka_partition "
                        "FROM events ORDER BY ts").to_arrow_table()
    name = f"seg-{time.time_ns():020d}-compacted.parquet"
    tmp = log.root / f".{name}.tmp"
    pq.write_table(table.cast(SCHEMA), tmp, compression="zstd")
    os.replace(tmp, log.root / name)
    for p in segs:
        p.unlink(missing_ok=True)
    return len(segs)
