"""Generic event files (CSV or Parquet) for import, replay and evaluation.

Columns: ``user_id``, ``song_id``, ``ts`` (unix seconds, or an ISO date/time), optional ``event``
(play|skip, default play), optional ``ms_played``, optional ``event_id``. A bad row is an error
naming its line, or with ``skip_bad`` is skipped and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from offline.event_table import batch_to_arrow
from online_models.batch import EventBatch
from online_models.event_rules import finite, id_problem, ms_played_problem, ts_problem

REQUIRED = ("user_id", "song_id", "ts")
OPTIONAL = ("event", "ms_played", "event_id")


class BadInputFile(ValueError):
    """An event/catalog file cannot be read; the message names the file and, if known, the line."""


def _source(path: Path) -> tuple[str, int]:
    """DuckDB table function for the file and the line number of its first data row."""
    quoted = "'" + str(path).replace("'", "''") + "'"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return f"read_parquet({quoted})", 1
    if suffix in (".csv", ".tsv", ".txt", ".gz"):
        return f"read_csv({quoted}, all_varchar=true, header=true)", 2
    raise BadInputFile(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def read_event_file(path: str | Path, skip_bad: bool = False, limit: int | None = None,
                    now: float | None = None) -> tuple[EventBatch, int]:
    """Read and validate an event file; returns (events in file order, bad rows skipped).
    A file without any valid event is an error (``BadInputFile``)."""
    now = time.time() if now is None else now
    path = Path(path)
    if not path.is_file():
        raise BadInputFile(f"{path}: no such file")
    source, first_line = _source(path)
    try:
        with closing(duckdb.connect()) as con:
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            missing = [c for c in REQUIRED if c not in cols]
            if missing:
                raise BadInputFile(f"{path}: missing column(s) {', '.join(missing)}; "
                                   f"expected {', '.join(REQUIRED)} [+ {', '.join(OPTIONAL)}]")
            ev_sql = "lower(trim(CAST(event AS VARCHAR)))" if "event" in cols else "'play'"
            ms_sql = "TRY_CAST(ms_played AS DOUBLE)" if "ms_played" in cols else "NULL::DOUBLE"
            ms_raw_sql = "CAST(ms_played AS VARCHAR)" if "ms_played" in cols else "NULL::VARCHAR"
            eid_sql = "CAST(event_id AS VARCHAR)" if "event_id" in cols else "NULL::VARCHAR"
            ts_num = ("coalesce(TRY_CAST(ts AS DOUBLE), epoch(TRY_CAST(CAST(ts AS VARCHAR) AS TIMESTAMP)))")
            table = con.sql(f"""
                SELECT CAST(user_id AS VARCHAR) AS user_id, CAST(song_id AS VARCHAR) AS song_id,
                       {ts_num} AS ts, CAST(ts AS VARCHAR) AS ts_raw, coalesce({ev_sql}, 'play') AS event,
                       {ms_sql} AS ms_played, {ms_raw_sql} AS ms_raw, {eid_sql} AS event_id
                FROM {source} {'' if limit is None else f'LIMIT {int(limit)}'}""").to_arrow_table()
    except duckdb.Error as exc:
        raise BadInputFile(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from exc

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False)

    users, songs, events, ids = col("user_id"), col("song_id"), col("event"), col("event_id")
    ts = np.asarray(col("ts"), dtype=np.float64)
    ms = np.asarray(col("ms_played"), dtype=np.float64)
    n = len(users)
    reason = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, why: str) -> None:
        reason[(reason == "") & mask] = why

    # the event contract's own rules (online_models.event_rules): a row the worker would refuse must
    # not get into the log by import, nor fail a replay half-way without naming its line
    _flag_each(reason, users, lambda v: id_problem("" if v is None else v, "user_id"))
    _flag_each(reason, songs, lambda v: id_problem("" if v is None else v, "song_id"))
    flag(np.isnan(ts), "ts is not a number or date")
    _flag_each(reason, ts, lambda t: ts_problem(finite(float(t)), now))
    flag(~np.isin(events, ["play", "skip"]), "event must be play or skip")
    ms_given = np.array([v is not None and str(v).strip() != "" for v in col("ms_raw")], bool)
    flag(ms_given & np.isnan(ms), "ms_played is not a number")
    _flag_each(reason, np.where(ms_given, ms, 0.0), lambda m: ms_played_problem(finite(float(m))))
    if ids is not None:
        _flag_each(reason, ids, lambda v: id_problem(v, "event_id") if v else None)  # empty: none given
    bad = reason != ""
    if bad.any() and not skip_bad:
        i = int(np.flatnonzero(bad)[0])
        raise BadInputFile(f"{path}:{i + first_line}: {reason[i]} (of {int(bad.sum())} bad rows; "
                           "pass --skip-bad to skip and count them)")
    keep = ~bad
    if ids is None or all(v is None for v in ids):
        ids = np.array([f"{path.name}:{i + first_line}" for i in range(n)], dtype=object)
    else:
        ids = np.array([v if v else f"{path.name}:{i + first_line}" for i, v in enumerate(ids)], dtype=object)
    ms = np.where(ms_given, ms, np.nan)
    if not keep.any():
        raise BadInputFile(f"{path}: no valid events" + (f" ({int(bad.sum())} bad rows skipped)" if bad.any() else ""))
    batch = EventBatch.from_columns(users[keep], songs[keep], events[keep], ts[keep], ms[keep], ids[keep])
    return batch, int(bad.sum())


def _flag_each(reason: np.ndarray, values: np.ndarray, problem: Callable[[Any], str | None]) -> None:
    """Record ``problem(value)`` for each row that has no reason yet."""
    for i in np.flatnonzero(reason == "").tolist():
        why = problem(values[i])
        if why is not None:
            reason[i] = why


def write_event_file(batch: EventBatch, path: str | Path) -> Path:
    """Write events as a generic event file (.parquet or .csv by suffix)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = batch_to_arrow(batch).drop(["ingested_at"])
    if path.suffix.lower() == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, compression="zstd")
    return path
