"""The event log: append-only Parquet segments, queried as one DuckDB table.

Why segments and not one ``.duckdb`` file: DuckDB lets one process open a database file for writing
and then no other process may even read it, but the worker writes while retrain jobs read. Each
append writes one segment under a temporary name and renames it into place, so readers never see
a partial file; ``offline.compaction`` merges small segments. Reads deduplicate by ``event_id``, so an event
redelivered by Kafka after a crash is counted once.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline import log_sql
from offline.event_table import arrow_to_batch, batch_to_arrow
from offline.eventfile import BadInputFile, read_event_file
from offline.removals import Tombstones
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.interactions import Interactions


@dataclass(frozen=True)
class LogRange:
    n_events: int
    n_users: int
    n_songs: int
    ts_min: float | None
    ts_max: float | None


class EventLog:
    """A directory of Parquet segments holding every valid event exactly once (after dedup)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tombstones = Tombstones(self.root)  # forgotten users' events are never written nor read

    def segments(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.parquet") if not p.name.startswith("."))

    def append(self, batch: EventBatch, writer: str = "") -> Path | None:
        """Write one segment atomically. ``writer`` (a worker's id) marks the segments that writer
        alone may later merge with :meth:`compact_own`."""
        void = self.tombstones.void(batch.user_ids, batch.ts)
        if void.any():
            batch = batch.take(np.flatnonzero(~void))
        if len(batch) == 0:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        tag = f"w{safe_writer(writer)}" if writer else uuid.uuid4().hex[:8]
        name = f"seg-{time.time_ns():020d}-{tag}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(batch_to_arrow(batch), tmp, compression="zstd")
        os.replace(tmp, self.root / name)
        return self.root / name

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views ``raw_events`` and ``events`` (deduplicated)."""
        con = duckdb.connect()
        segs = self.segments()
        forgotten = self.tombstones.at()
        if segs:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in segs)
            source = f"read_parquet([{files}], union_by_name=true)"
            if forgotten:
                # a segment being rewritten by a purge still holds them: they are void all the same
                con.register("tombstones", pa.table({"user_id": list(forgotten), "at": list(forgotten.values())}))
                source = f"({log_sql.without_forgotten(source, 'tombstones')})"
            con.execute(f"CREATE VIEW raw_events AS SELECT * FROM {source}")
        else:
            con.execute("CREATE TABLE raw_events (user_id VARCHAR, song_id VARCHAR, event VARCHAR, ts DOUBLE, "
                        "ms_played BIGINT, event_id VARCHAR, ingested_at DOUBLE)")
        con.execute(f"CREATE VIEW events AS {log_sql.dedup('raw_events')}")
        return con

    def range(self, until: float | None = None) -> LogRange:
        with closing(self.connect()) as con:
            where = "" if until is None else f"WHERE ts <= {float(until)!r}"
            row = con.execute(f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT song_id), min(ts), max(ts) "
                              f"FROM events {where}").fetchall()[0]
        assert row is not None
        return LogRange(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])

    def read(self, since: float | None = None, until: float | None = None,
             exclude_holdout: bool = False) -> EventBatch:
        """Events (deduplicated) with since < ts <= until, in time order. ``exclude_holdout`` drops
        every event of the :meth:`holdout` pairs, as :meth:`interactions` does."""
        with closing(self.connect()) as con:
            table = con.sql(f"{self._source(since, until, exclude_holdout)} SELECT user_id, song_id, event, ts, "
                            "ms_played, event_id FROM t ORDER BY ts, ingested_at, event_id").to_arrow_table()
        return arrow_to_batch(table)

    def latest_plays(self, n: int, since: float | None = None, until: float | None = None,
                     exclude_holdout: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``n`` latest plays as parallel (users, songs) arrays in time order (the order of
        :meth:`read`): the input a sequence model is evaluated on, without reading the whole log."""
        if n <= 0:
            raise ValueError("n must be positive")
        with closing(self.connect()) as con:
            t = con.sql(f"""{self._source(since, until, exclude_holdout)},
                r AS (SELECT user_id, song_id, ts, ingested_at, event_id,
                             row_number() OVER (PARTITION BY user_id
                                                ORDER BY ts DESC, ingested_at DESC, event_id DESC) AS rn
                      FROM t WHERE event = 'play')
                SELECT user_id, song_id FROM r WHERE rn <= {int(n)}
                ORDER BY ts, ingested_at, event_id""").to_arrow_table()
        return (t.column("user_id").to_numpy(zero_copy_only=False).astype(object),
                t.column("song_id").to_numpy(zero_copy_only=False).astype(object))

    def _source(self, since: float | None, until: float | None, exclude_holdout: bool) -> str:
        """``WITH ... t AS (...)``: the window's events, minus the held-out pairs when asked."""
        if not exclude_holdout:
            return f"WITH t AS (SELECT * FROM events {log_sql.window(since, until)})"
        return (f"WITH w AS (SELECT * FROM events {log_sql.window(since, until)}), h AS ({log_sql.holdout('w')}), "
                f"t AS ({log_sql.without_holdout('w', 'h')})")

    def recent_event_ids(self, limit: int) -> list[str]:
        """The event_ids of the ``limit`` most recently *ingested* events, oldest first. A worker
        restarting after a crash reads them: Kafka redelivers what was not committed, and those are
        the events appended last (whatever their ``ts``)."""
        if limit <= 0:
            return []
        with closing(self.connect()) as con:
            rows = con.execute("SELECT event_id FROM (SELECT event_id, ingested_at FROM raw_events "
                               "WHERE event_id IS NOT NULL ORDER BY ingested_at DESC LIMIT ?) "
                               "ORDER BY ingested_at", [int(limit)]).fetchall()
        return [r[0] for r in rows]

    def holdout(self, since: float | None = None, until: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Leave-last-out slice: per user with >= 2 distinct played songs, the song they most recently
        played for the first time (ties broken by the md5 of the song id). (users, songs), sorted."""
        with closing(self.connect()) as con:
            t = con.sql(f"WITH w AS (SELECT * FROM events {log_sql.window(since, until)}) {log_sql.holdout('w')} "
                        "ORDER BY user_id").to_arrow_table()
        return (t.column("user_id").to_numpy(zero_copy_only=False).astype(object),
                t.column("song_id").to_numpy(zero_copy_only=False).astype(object))

    def interactions(self, config: OnlineConfig, since: float | None = None, until: float | None = None,
                     exclude_holdout: bool = False) -> Interactions:
        """Training input aggregated in SQL with the online state's rules (``online_models.history``):
        plays weigh min(1, ms_played / full_play_ms) (1 when unknown), skips ``skip_weight``, each
        decayed by its age relative to the user's latest event; the strongest ``max_history`` songs
        per user are kept. ``exclude_holdout`` drops every event of the :meth:`holdout` pairs, so a
        model can be evaluated on what it never saw."""
        sql = log_sql.interactions("events", config, since, until, exclude_holdout) + " ORDER BY user_id, song_id"
        with closing(self.connect()) as con:
            t = con.sql(sql).to_arrow_table()
        return Interactions(t.column("user_id").to_numpy(zero_copy_only=False),
                            t.column("song_id").to_numpy(zero_copy_only=False),
                            t.column("pos").to_numpy(), t.column("neg").to_numpy())

    def import_file(self, path: str | Path, skip_bad: bool = False) -> tuple[int, int]:
        """Append a generic event file; returns (events added, bad rows skipped)."""
        batch, skipped = read_event_file(path, skip_bad=skip_bad)
        if len(batch) == 0:
            raise BadInputFile(f"{path}: no valid events")
        self.append(batch)
        return len(batch), skipped


def safe_writer(writer: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in writer)[:64]

