"""ALS on Spark MLlib, reading the event log's Parquet segments directly: the retrain of a log that has
outgrown one machine (``musicrec retrain --engine spark``).

Spark runs the very SQL DuckDB runs in process (``offline.log_sql``: deduplication by ``event_id``,
play weighting, skips, decay, the held-out slice) and factorises with
``pyspark.ml.recommendation.ALS(implicitPrefs=True)``. What comes back to the driver is what a version
holds anyway (the factors and id lists) plus the held-out slice and the gate users' training rows, so
``offline.retrain`` gates, writes and publishes the result exactly like an in-process version.

Two conventions differ and are translated, so the same hyper-parameters mean the same model:

- confidence: implicit reads a signed value v as confidence |v|; Spark reads a rating r as confidence
  1 + alpha·|r|. The rating is therefore alpha·(pos - neg) with Spark's alpha = 1, which gives both
  the confidence 1 + alpha·|pos - neg| and the preference [pos > neg] of ``online_models.foldin``.
- regularisation: Spark scales lambda by each user's (and song's) count of positive ratings (ALS-WR);
  implicit adds lambda as it is. ``regParam`` = lambda / (mean positives per user), so the
  regularisation summed over users matches.

pyspark is an optional dependency (``pip install -e '.[spark]'``), imported only inside these
functions: a worker never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from index_manager.artifacts import ModelArtifact
from offline import log_sql
from offline.errors import EngineUnavailable
from offline.eventlog import LogRange
from offline.removals import Tombstones
from online_models.als import als_artifact
from online_models.config import OnlineConfig
from online_models.interactions import Interactions


@contextmanager
def spark_session(master: str, partitions: int = 0, app_name: str = "musicrec-retrain") -> Iterator[Any]:
    """A Spark session on ``master`` (``local[*]``, ``spark://host:7077``), stopped on exit unless it
    was already active (then it is the caller's, with the caller's master).
    ``partitions`` is the shuffle width (0: Spark's default parallelism, i.e. the cluster's cores)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise EngineUnavailable("--engine spark needs pyspark: pip install -e '.[spark]' (and Java 17)") from exc
    if not master:
        raise ValueError("the Spark master URL is empty (MUSICREC_SPARK_MASTER)")
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               # factors come back through Arrow, not row by row through py4j
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    owned = SparkSession.getActiveSession() is None  # a session the caller opened stays open
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j/JVM start-up failures have no common base class
        raise EngineUnavailable(f"could not start Spark on {master!r}: {exc}") from exc
    spark.sparkContext.setLogLevel("ERROR")
    # Spark's fixed default of 200 shuffle partitions made a 100k-event retrain 40x slower on 2 cores
    width = partitions or spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.shuffle.partitions", str(max(1, width)))
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


@dataclass(frozen=True)
class SparkTraining:
    """What the driver gets back from a Spark retrain."""

    span: LogRange
    artifact: ModelArtifact
    holdout_users: np.ndarray  # (users, songs) of the held-out slice, sorted by user
    holdout_songs: np.ndarray
    gate_history: Interactions  # training rows of the users asked for in ``gate_users``
    catalog: np.ndarray  # every song of the training rows


def _arrow(df: Any) -> pa.Table:
    return df.toArrow()


def _strings(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(object)


def log_frame(spark: Any, root: str | Path) -> Any:
    """The deduplicated events of the log directory as the temporary view ``events``, without the
    erased history of forgotten users (the log's tombstones, as DuckDB reads it)."""
    raw = (spark.read.option("pathGlobFilter", "*.parquet").option("mergeSchema", "true")
           .parquet(str(root)))
    forgotten = Tombstones(root).at()
    if forgotten:
        raw.createOrReplaceTempView("raw_segments")
        spark.createDataFrame(list(forgotten.items()), "user_id string, at double").createOrReplaceTempView(
            "tombstones")
        raw = spark.sql(log_sql.without_forgotten("raw_segments", "tombstones"))
    raw.createOrReplaceTempView("raw_events")
    events = spark.sql(log_sql.dedup("raw_events")).cache()
    events.createOrReplaceTempView("events")
    return events


def log_range(spark: Any, until: float | None) -> LogRange:
    where = "" if until is None else f"WHERE ts <= {log_sql.num(until)}"
    row = spark.sql(f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT song_id), min(ts), max(ts) "
                    f"FROM events {where}").collect()[0]
    return LogRange(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])


def spark_holdout(spark: Any, since: float | None, until: float | None) -> tuple[np.ndarray, np.ndarray]:
    t = _arrow(spark.sql(f"WITH w AS (SELECT * FROM events {log_sql.window(since, until)}) "
                         f"{log_sql.holdout('w')}"))
    users, songs = _strings(t, "user_id"), _strings(t, "song_id")
    order = np.argsort(users.astype(str), kind="stable")
    return users[order], songs[order]


def train_spark_als(spark: Any, root: str | Path, config: OnlineConfig, *, since_days: float = 0.0,
                    until: float | None = None, choose_gate_users: Any = None,
                    trained_on: dict[str, Any] | None = None) -> SparkTraining:
    """Read the log at ``root``, hold out each user's latest first play, train ALS on the rest.
    ``choose_gate_users(users, songs) -> (users, songs)`` picks the gate's users from the held-out
    slice (the in-process sampling rule); their training rows come back for the gate's fold-in."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    started = time.perf_counter()
    log_frame(spark, root)
    span = log_range(spark, until)
    if span.n_events == 0 or span.ts_max is None:
        raise ValueError(f"the event log at {root} has no events to train on")
    since = span.ts_max - since_days * 86400.0 if since_days > 0 else None
    users, songs = spark_holdout(spark, since, until)
    if choose_gate_users is not None:
        users, songs = choose_gate_users(users, songs)
    rows = spark.sql(log_sql.interactions("events", config, since, until, exclude_holdout=len(users) > 0))
    rows = rows.withColumn("rating", F.lit(config.alpha) * (F.col("pos") - F.col("neg"))).cache()
    indexer = StringIndexer(inputCols=["user_id", "song_id"], outputCols=["u", "s"],
                            stringOrderType="alphabetAsc").fit(rows)
    user_names = np.asarray(indexer.labelsArray[0], dtype=object)
    song_names = np.asarray(indexer.labelsArray[1], dtype=object)
    indexed = (indexer.transform(rows).select(F.col("u").cast("int").alias("u"), F.col("s").cast("int").alias("s"),
                                              "rating").cache())
    stats = indexed.agg(F.count("*").alias("n"), F.sum(F.when(F.col("rating") > 0, 1).otherwise(0)).alias("pos"),
                        F.countDistinct("u").alias("users")).collect()[0]
    mean_positives = max(1.0, float(stats["pos"] or 0) / max(1, int(stats["users"])))
    reg_param = config.regularization / mean_positives
    prepared = time.perf_counter()
    blocks = max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    als = ALS(rank=config.factors, maxIter=config.iterations, regParam=reg_param, alpha=1.0, implicitPrefs=True,
              userCol="u", itemCol="s", ratingCol="rating", seed=config.seed, nonnegative=False,
              numUserBlocks=blocks, numItemBlocks=blocks)
    model = als.fit(indexed)
    fitted = time.perf_counter()
    user_factors = _factor_matrix(_arrow(model.userFactors), len(user_names), config.factors)
    item_factors = _factor_matrix(_arrow(model.itemFactors), len(song_names), config.factors)
    plays_t = _arrow(indexed.where(F.col("rating") > 0).groupBy("s").count())
    plays = np.zeros(len(song_names), np.float64)
    plays[plays_t.column("s").to_numpy()] = plays_t.column("count").to_numpy()
    gate_history = _gate_rows(spark, rows, users)
    collected = time.perf_counter()
    artifact = als_artifact(user_names, song_names, user_factors, item_factors, plays, config,
                            dict(trained_on or {}, n_interactions=int(stats["n"])),
                            params={"engine": "spark", "spark_version": spark.version,
                                    "spark_master": spark.sparkContext.master, "spark_reg_param": reg_param})
    # where a Spark retrain spends its time (Spark is lazy: "sql" includes reading the Parquet files)
    artifact.metrics["spark_seconds"] = {"sql": prepared - started, "als_fit": fitted - prepared,
                                         "collect": collected - fitted}
    return SparkTraining(span, artifact, users, songs, gate_history, song_names)


def _factor_matrix(table: pa.Table, n: int, width: int) -> np.ndarray:
    """(n, width) float32 from Spark's (id, features) rows; an id Spark never saw keeps zeros."""
    out = np.zeros((n, width), np.float32)
    ids = table.column("id").to_numpy()
    if len(ids):
        features = table.column("features").combine_chunks()
        flat = features.flatten().to_numpy(zero_copy_only=False)
        out[ids] = np.asarray(flat, np.float32).reshape(len(ids), width)
    return out


def _gate_rows(spark: Any, rows: Any, users: np.ndarray) -> Interactions:
    if len(users) == 0:
        return Interactions(np.empty(0, object), np.empty(0, object), np.empty(0), np.empty(0))
    wanted = spark.createDataFrame([(str(u),) for u in users], "user_id string")
    t = _arrow(rows.join(wanted.hint("broadcast"), "user_id").select("user_id", "song_id", "pos", "neg"))
    return Interactions(_strings(t, "user_id"), _strings(t, "song_id"), t.column("pos").to_numpy(),
                        t.column("neg").to_numpy())
