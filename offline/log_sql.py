"""The event log's training queries as SQL text that both engines run: DuckDB in process
(``offline.eventlog``) and Spark over the same Parquet files (``offline.spark_als``). One text, so the
deduplication, the aggregation rules and the held-out slice cannot drift apart between them.

Only SQL both dialects read the same way: ``NOT EXISTS`` rather than DuckDB's ``ANTI JOIN``,
``md5`` (the same digest in both) rather than DuckDB's engine-specific ``hash``, explicit column
lists rather than ``* EXCLUDE``, and every number cast to DOUBLE (Spark reads ``0.05`` as a DECIMAL).
"""

from __future__ import annotations

from online_models.config import OnlineConfig

COLUMNS = ("user_id", "song_id", "event", "ts", "ms_played", "event_id", "ingested_at")


def num(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"


def dedup(raw: str, extra: tuple[str, ...] = ()) -> str:
    """The rows of relation ``raw`` once per ``event_id`` (the first ingested copy); an event without
    an id is identified by user, song and time. ``extra``: more columns to keep (the partition an
    event was consumed from, which only the workers' restore reads)."""
    cols = ", ".join(COLUMNS + extra)
    return f"""SELECT {cols} FROM (
        SELECT {cols}, row_number() OVER (
                   PARTITION BY coalesce(event_id, concat('#', user_id, song_id, CAST(ts AS STRING)))
                   ORDER BY ingested_at) AS rn
        FROM {raw}) d WHERE rn = 1"""


def without_forgotten(source: str, tombstones: str) -> str:
    """The rows of ``source`` minus those of forgotten users (relation ``tombstones``: user_id, at) at
    or before the time each was forgotten (``offline.removals``)."""
    return (f"SELECT r.* FROM {source} r WHERE NOT EXISTS "
            f"(SELECT 1 FROM {tombstones} t WHERE t.user_id = r.user_id AND r.ts <= t.at)")


def window(since: float | None, until: float | None) -> str:
    conds = []
    if since is not None:
        conds.append(f"ts > {num(since)}")
    if until is not None:
        conds.append(f"ts <= {num(until)}")
    return ("WHERE " + " AND ".join(conds)) if conds else ""


def holdout(w: str) -> str:
    """Per user of relation ``w`` with >= 2 distinct played songs, the song they most recently played
    for the first time (ties broken by the song id's md5, then the id): columns (user_id, song_id)."""
    return f"""
        SELECT user_id, song_id FROM (
            SELECT user_id, song_id, first_ts,
                   row_number() OVER (PARTITION BY user_id ORDER BY first_ts DESC, md5(song_id), song_id) AS r,
                   count(*) OVER (PARTITION BY user_id) AS n
            FROM (SELECT user_id, song_id, min(ts) AS first_ts FROM {w} WHERE event = 'play'
                  GROUP BY user_id, song_id) p) q
        WHERE r = 1 AND n >= 2"""


def without_holdout(w: str, h: str) -> str:
    """The rows of ``w`` whose (user, song) pair is not in ``h``."""
    return (f"SELECT * FROM {w} WHERE NOT EXISTS "
            f"(SELECT 1 FROM {h} WHERE {h}.user_id = {w}.user_id AND {h}.song_id = {w}.song_id)")


def interactions(events: str, config: OnlineConfig, since: float | None, until: float | None,
                 exclude_holdout: bool) -> str:
    """(user_id, song_id, pos, neg) from relation ``events`` (deduplicated): plays weigh
    min(1, ms_played / full_play_ms), at least 0.05 (1 when unknown), skips ``skip_weight``, each
    decayed by its age relative to the user's latest event; the strongest ``max_history`` songs per
    user are kept. No ORDER BY: the caller sorts if it needs to."""
    half_life_s = config.half_life_days * 86400.0
    decay = "1.0" if half_life_s <= 0 else f"exp(-ln(2) * (user_last - ts) / {num(half_life_s)})"
    source = "w"
    holdout_cte = ""
    if exclude_holdout:
        holdout_cte = f", h AS ({holdout('w')}), wh AS ({without_holdout('w', 'h')})"
        source = "wh"
    return f"""
        WITH w AS (SELECT * FROM {events} {window(since, until)}){holdout_cte},
        u AS (SELECT *, max(ts) OVER (PARTITION BY user_id) AS user_last FROM {source}),
        agg AS (
            SELECT user_id, song_id,
                sum(CASE WHEN event = 'play' THEN
                        (CASE WHEN ms_played IS NULL THEN {num(1.0)}
                              ELSE least(greatest(ms_played / {num(config.full_play_ms)}, {num(0.05)}),
                                         {num(1.0)}) END)
                        * {decay} ELSE {num(0.0)} END) AS pos,
                sum(CASE WHEN event = 'skip' THEN {num(config.skip_weight)} * {decay}
                         ELSE {num(0.0)} END) AS neg
            FROM u GROUP BY user_id, song_id),
        ranked AS (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY pos + neg DESC, song_id) AS r
                   FROM agg)
        SELECT user_id, song_id, pos, neg FROM ranked WHERE r <= {int(config.max_history)}"""
