"""The event log: append-only Parquet segments, queried as one DuckDB table.

Why segments and not one ``.duckdb`` file: DuckDB lets one process open a database file for writing
and then no other process may even read it, but the worker writes while retrain jobs read. Each
append writes one segment under a temporary name and renames it into place, so readers never see
a partial file; ``offline.compaction`` merges small segments. Reads deduplicate by ``event_id``, so an event
redelivered by Kafka after a crash is counted once.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")


@dataclass(frozen=True)
class LogRange:
    n_events: int
    n_users: int
    n_songs: int
    ts_min: float | None
    ts_max: float | None


COMPACTION_RETRIES = 3


def _survives_compaction(method: Callable[..., T]) -> Callable[..., T]:
    """Run a read again when a segment it listed was merged away meanwhile (a writer compacting its
    own segments next to a reader: the merged segment holds the same events under a new name)."""
    @functools.wraps(method)
    def read(*args: Any, **kwargs: Any) -> T:
        for attempt in range(COMPACTION_RETRIES):
            try:
                return method(*args, **kwargs)
            except duckdb.IOException:
                if attempt == COMPACTION_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    return read


class EventLog:
    """A directory of Parquet segments holding every valid event exactly once (after dedup)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tombstones = Tombstones(self.root)  # forgotten users' events are never written nor read

    def segments(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.parquet") if not p.name.startswith("."))

    def append(self, batch: EventBatch, writer: str = "", partitions: np.ndarray | None = None) -> Path | None:
        """Write one segment atomically. ``writer`` (a worker's id) marks the segments that writer
        alone may later merge with :meth:`compact_own`; ``partitions`` are the events-topic
        partitions the events came from (none for history imported without Kafka)."""
        void = self.tombstones.void(batch.user_ids, batch.ts)
        if void.any():
            keep = np.flatnonzero(~void)
            batch = batch.take(keep)
            partitions = None if partitions is None else np.asarray(partitions)[keep]
        if len(batch) == 0:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        tag = f"w{safe_writer(writer)}" if writer else uuid.uuid4().hex[:8]
        name = f"seg-{time.time_ns():020d}-{tag}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(batch_to_arrow(batch, partitions=partitions), tmp, compression="zstd")
        os.replace(tmp, self.root / name)
        return self.root / name

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views ``raw_events`` and ``events`` (deduplicated)."""
        con = duckdb.connect()
        segs = self.segments()
        forgotten = self.tombstones.at()
        if segs:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in segs)
            con.execute(f"CREATE VIEW segments AS SELECT * FROM read_parquet([{files}], union_by_name=true)")
            columns = {row[0] for row in con.execute("DESCRIBE segments").fetchall()}
            # a log written before events recorded their partition has no such column at all
            extra = "" if "kafka_partition" in columns else ", CAST(NULL AS INTEGER) AS kafka_partition"
            source = f"(SELECT *{extra} FROM segments)"
            if forgotten:
                # a segment being rewritten by a purge still holds them: they are void all the same
                con.register("tombstones", pa.table({"user_id": list(forgotten), "at": list(forgotten.values())}))
                source = f"({log_sql.without_forgotten(source, 'tombstones')})"
            con.execute(f"CREATE VIEW raw_events AS SELECT * FROM {source}")
        else:
            con.execute("CREATE TABLE raw_events (user_id VARCHAR, song_id VARCHAR, event VARCHAR, ts DOUBLE, "
                        "ms_played BIGINT, event_id VARCHAR, ingested_at DOUBLE, kafka_partition INTEGER)")
        con.execute(f"CREATE VIEW events AS {log_sql.dedup('raw_events', extra=('kafka_partition',))}")
        return con

    def range(self, until: float | None = None) -> LogRange:
        with closing(self.connect()) as con:
            where = "" if until is None else f"WHERE ts <= {float(until)!r}"
            row = con.execute(f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT song_id), min(ts), max(ts) "
                              f"FROM events {where}").fetchall()[0]
        assert row is not None
        return LogRange(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])

    @_survives_compaction
    def read(self, since: float | None = None, until: float | None = None,
             exclude_holdout: bool = False) -> EventBatch:
        """Events (deduplicated) with since < ts <= until, in time order. ``exclude_holdout`` drops
        every event of the :meth:`holdout` pairs, as :meth:`interactions` does."""
        with closing(self.connect()) as con:
            table = con.sql(f"{self._source(since, until, exclude_holdout)} SELECT user_id, song_id, event, ts, "
                            "ms_played, event_id FROM t ORDER BY ts, ingested_at, event_id").to_arrow_table()
        return arrow_to_batch(table)

    @_survives_compaction
    def read_partitions(self, partitions: Iterable[int], partition_of: Callable[[np.ndarray], np.ndarray],
                        window_s: float = 0.0, ttl_s: float = 0.0) -> tuple[EventBatch, np.ndarray]:
        """The events of the users of ``partitions`` (deduplicated, in time order) and each one's
        partition: what a worker holding those partitions restores. An event's partition is the one
        it was consumed from; history imported without Kafka has none, and goes by its user's key,
        ``partition_of(user_ids)`` (the producers' partitioner). ``window_s`` > 0 keeps only each
        user's events that recent before their latest one; ``ttl_s`` > 0 skips users whose latest
        event is that much older than the log's newest."""
        wanted = sorted({int(p) for p in partitions})
        if not wanted:
            return EventBatch.empty(), np.empty(0, np.int32)
        conds = [f"user_last > (SELECT max(ts) FROM raw_events) - {float(ttl_s)!r}"] if ttl_s > 0 else []
        if window_s > 0:
            conds.append(f"ts > user_last - {float(window_s)!r}")
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        with closing(self.connect()) as con:
            self._partition_view(con, partition_of)
            t = con.sql(f"""
                WITH p AS (SELECT * FROM parted WHERE part IN ({", ".join(map(str, wanted))})),
                u AS (SELECT *, max(ts) OVER (PARTITION BY user_id) AS user_last FROM p)
                SELECT user_id, song_id, event, ts, ms_played, event_id, part FROM u {where}
                ORDER BY ts, ingested_at, event_id""").to_arrow_table()
        return arrow_to_batch(t), t.column("part").to_numpy(zero_copy_only=False).astype(np.int32)

    @staticmethod
    def _partition_view(con: duckdb.DuckDBPyConnection, partition_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """View ``parted``: ``events`` with ``part``, the recorded partition or the user's key's."""
        users = con.sql("SELECT DISTINCT user_id FROM raw_events WHERE kafka_partition IS NULL").to_arrow_table()
        ids = users.column("user_id").to_numpy(zero_copy_only=False).astype(object)
        keyed = pa.table({"user_id": pa.array(ids.tolist(), pa.string()),
                          "key_part": pa.array(np.asarray(partition_of(ids), dtype=np.int32), pa.int32())})
        con.register("keyed", keyed)
        con.execute("CREATE TEMP VIEW parted AS SELECT e.*, coalesce(e.kafka_partition, k.key_part) AS part "
                    "FROM events e LEFT JOIN keyed k USING (user_id)")

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

    @_survives_compaction
    def recent_event_ids(self, limit: int, partitions: Iterable[int] | None = None,
                         partition_of: Callable[[np.ndarray], np.ndarray] | None = None) -> list[str]:
        """The event_ids of the ``limit`` most recently *ingested* events (of ``partitions``, as
        :meth:`read_partitions` assigns them, when given), oldest first. A worker restarting after a
        crash, or taking partitions over, reads them: Kafka redelivers what was not committed, and
        those are the events appended last (whatever their ``ts``)."""
        if limit <= 0:
            return []
        with closing(self.connect()) as con:
            source, where = "raw_events", ""
            if partitions is not None:
                if partition_of is None:
                    raise ValueError("partitions need partition_of")
                wanted = sorted({int(p) for p in partitions})
                if not wanted:
                    return []
                self._partition_view(con, partition_of)
                source, where = "parted", f"AND part IN ({', '.join(map(str, wanted))})"
            rows = con.execute(f"SELECT event_id FROM (SELECT event_id, ingested_at FROM {source} "
                               f"WHERE event_id IS NOT NULL {where} ORDER BY ingested_at DESC, event_id DESC "
                               "LIMIT ?) ORDER BY ingested_at, event_id", [int(limit)]).fetchall()
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

