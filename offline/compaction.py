"""Rewriting the event log's segments: merging them (one per worker micro-batch adds up to thousands
an hour) and purging forgotten users' events from them.

Readers deduplicate by ``event_id``, so a crash between writing a merged segment and removing its
parts leaves duplicates that no reader sees; and readers skip forgotten users' events, so a segment
a purge has not reached yet (or one a concurrent merge wrote from a segment before its purge) shows
none of them either, until the next purge removes them from disk.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass

import duckdb
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
            out.write_table(_without_void(log, conform(pq.ParquetFile(p).read(use_threads=False))))
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


def _without_void(log: EventLog, table: pa.Table) -> pa.Table:
    if not len(log.tombstones):  # no forgotten user: the columns need not become Python strings
        return table
    void = log.tombstones.void(table.column("user_id").to_numpy(zero_copy_only=False),
                               table.column("ts").to_numpy(zero_copy_only=False))
    return table.filter(pa.array(~void)) if void.any() else table


@dataclass(frozen=True)
class Purged:
    events: int  # events removed from disk
    segments: int  # segments rewritten (or deleted, when nothing else was in them)


def purge_forgotten(log: EventLog, writer: str | None = None) -> Purged:
    """Rewrite every segment holding a forgotten user's void events without them (each under a
    temporary name, renamed over the old one); ``writer`` limits this to that writer's segments
    (a worker purging what it may have appended before it knew of a forget)."""
    forgotten = log.tombstones.at()
    segs = log.segments()
    if writer is not None:
        segs = [p for p in segs if f"-w{safe_writer(writer)}-" in p.name]
    if not forgotten or not segs:
        return Purged(0, 0)
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in segs)
    with closing(duckdb.connect()) as con:
        con.register("tombstones", pa.table({"user_id": list(forgotten), "at": list(forgotten.values())}))
        hit = con.execute(f"SELECT r.filename FROM read_parquet([{files}], filename=true, union_by_name=true) r "
                          "SEMI JOIN tombstones t ON r.user_id = t.user_id AND r.ts <= t.at "
                          "GROUP BY r.filename").fetchall()
    removed = rewritten = 0
    for (name,) in hit:
        path = log.root / os.path.basename(name)
        try:
            table = conform(pq.read_table(path))
        except FileNotFoundError:  # merged away meanwhile: the merged segment filtered them out
            continue
        kept = _without_void(log, table)
        removed += table.num_rows - kept.num_rows
        rewritten += 1
        if kept.num_rows == 0:
            path.unlink(missing_ok=True)
            continue
        tmp = log.root / f".{path.name}.purge.tmp"
        pq.write_table(kept, tmp, compression="zstd")
        os.replace(tmp, path)
    return Purged(removed, rewritten)
