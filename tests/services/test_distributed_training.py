"""Retraining beyond one process, on a slice of the real Last.fm log: Spark MLlib ALS in local mode
(`--engine spark`) and torch DDP over 2 processes (`--workers 2`). Both write versions through the
same gate as the in-process path; figures for the whole log are in docs/SCALING.md."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from index_manager.artifacts import load_artifact, read_manifest
from offline.config import TrainConfig
from offline.eventfile import read_event_file
from offline.eventlog import EventLog
from offline.retrain import retrain
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.ncf_config import NCFConfig
from online_models.ncf_weights import WEIGHTS_FILE, weights_from_bytes
from online_models.sasrec_spec import SASRecConfig
from tests.conftest import REPO
from tests.synthetic import synthetic_log

RANDOM_HR = 10 / 100  # HR@10 of random scores against 99 negatives


def _log(tmp_path: Path, events_path: Path, users: int) -> EventLog:
    """The first ``users`` users of Last.fm, plus events with what Last.fm lacks (skips, ms_played)
    and a segment written twice (redelivery), so every aggregation rule has rows to act on."""
    events, _ = read_event_file(events_path)
    keep = np.isin(events.user_ids, np.unique(events.user_ids)[:users])
    log = EventLog(tmp_path / "log")
    log.append(events.take(keep))
    extra = synthetic_log(n_users=40, n_songs=200, n_events=2000)
    ms = np.random.default_rng(1).integers(0, 60_000, len(extra)).astype(np.float64)
    ms[::7] = np.nan
    extra = EventBatch.from_columns(extra.user_ids, extra.song_ids, extra.event_names(), extra.ts, ms,
                                    extra.event_ids)
    log.append(extra)
    log.append(extra.take(slice(0, 300)))
    return log


@pytest.fixture
def spark_ready() -> None:
    pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java 17 (Debian: openjdk-17-jre-headless)")


def _rows(table: object) -> dict[tuple[str, str], tuple[float, float]]:
    cols = [table.column(c).to_pylist() for c in ("user_id", "song_id", "pos", "neg")]  # type: ignore[attr-defined]
    return {(u, s): (p, n) for u, s, p, n in zip(*cols, strict=True)}


@pytest.mark.usefixtures("spark_ready")
@pytest.mark.timeout(600)  # a JVM start and cold query compilation on a busy 2-core machine: ~2 min
def test_spark_reads_the_log_like_duckdb_and_writes_a_version_gated_on_the_same_slice(
        lastfm_import, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from offline import log_sql
    from offline.spark_als import log_frame, log_range, spark_holdout, spark_session

    log = _log(tmp_path, lastfm_import.events_path, users=250)
    forgotten = str(log.read().user_ids[0])
    until = float(np.median(log.read().ts))
    log.tombstones.record([forgotten], until)  # their history up to then is erased for both engines
    config = OnlineConfig(factors=16, iterations=3)
    versions = tmp_path / "versions"
    # one core: Spark's cost here is start-up and query compilation, which threads do not shorten
    with spark_session("local[1]") as spark:
        log_frame(spark, log.root)
        erased = spark.sql(f"SELECT count(*) FROM events WHERE user_id = '{forgotten}' AND ts <= {until!r}")
        assert erased.collect()[0][0] == 0
        assert log_range(spark, until) == log.range(until)
        users, songs = spark_holdout(spark, None, None)
        duck_users, duck_songs = log.holdout()
        assert users.tolist() == duck_users.tolist() and songs.tolist() == duck_songs.tolist()
        # the training rows: every rule (dedup, weighting, skips, decay, cap) minus the held-out pairs
        duck = log.interactions(config, exclude_holdout=True)
        ours = _rows(spark.sql(log_sql.interactions("events", config, None, None, True)).toArrow())
        assert len(ours) == len(duck)
        theirs = {(u, s): (p, n) for u, s, p, n in zip(duck.user_ids, duck.song_ids, duck.pos, duck.neg,
                                                       strict=True)}
        assert ours.keys() == theirs.keys()
        got, want = np.array([ours[k] for k in theirs]), np.array(list(theirs.values()))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert (want[:, 1] > 0).any() and (want[:, 0] % 1 != 0).any()  # skips and partial plays counted

        local = retrain(log, versions, config, TrainConfig())
        # the session above is reused (and left open): one JVM start for the whole test
        result = retrain(log, versions, config, TrainConfig(engine="spark"), served=local.artifact)

    manifest = read_manifest(versions, result.version)
    assert manifest["kind"] == "als" and manifest["params"]["engine"] == "spark"
    assert manifest["params"]["iterations"] == 3 and manifest["factors"] == 16
    spark_version = load_artifact(versions, result.version)  # every file against its checksum
    ours, theirs = spark_version, local.artifact
    assert ours.song_names.tolist() == theirs.song_names.tolist()
    assert ours.user_names.tolist() == theirs.user_names.tolist()
    np.testing.assert_array_equal(ours.popularity, theirs.popularity)
    assert ours.trained_on["n_interactions"] == theirs.trained_on["n_interactions"]
    assert ours.trained_on["held_out_users"] == theirs.trained_on["held_out_users"]
    gate = manifest["metrics"]["gate"]
    # the in-process version, scored as the served one on the Spark run's slice, gets its own figures:
    # the slice (users, held-out songs, negatives, training rows) is the same
    assert gate["served"] == local.decision.candidate
    assert gate["candidate"]["users"] == local.decision.candidate["users"] > 100
    assert gate["candidate"]["hr@10"] > max(2 * RANDOM_HR, 0.5 * local.decision.candidate["hr@10"])


def test_neumf_trains_over_two_processes_into_one_gated_version(lastfm_import, tmp_path: Path  # type: ignore[no-untyped-def]
                                                                 ) -> None:
    log = _log(tmp_path, lastfm_import.events_path, users=250)
    versions = tmp_path / "versions"
    ncf = NCFConfig(epochs=3, val_users=100)
    result = retrain(log, versions, OnlineConfig(), TrainConfig(model="ncf", workers=2), ncf_config=ncf)

    art = load_artifact(versions, result.version)
    assert art.kind == "ncf" and art.params["workers"] == 2 and "gloo" in art.params["distributed"]
    assert art.params["config"]["batch_size"] == ncf.batch_size  # the global batch, as one process steps
    weights = weights_from_bytes(art.files[WEIGHTS_FILE])  # the one NeuMF layout
    assert weights["gmf_user.weight"].shape == (len(art.user_names), ncf.factors)
    assert weights["gmf_item.weight"].shape == (len(art.song_names), ncf.factors)
    history = art.metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1)) and len(history) >= 2
    assert history[-1]["loss"] < history[0]["loss"]
    candidate = art.metrics["gate"]["candidate"]
    assert candidate["users"] > 100 and candidate["hr@10"] > 2 * RANDOM_HR


def test_sasrec_trains_over_two_processes(lastfm_import, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = _log(tmp_path, lastfm_import.events_path, users=250)
    versions = tmp_path / "versions"
    cfg = SASRecConfig(epochs=2, val_users=100)
    result = retrain(log, versions, OnlineConfig(), TrainConfig(model="sasrec", workers=2), sasrec_config=cfg)
    art = load_artifact(versions, result.version)
    assert art.kind == "sasrec" and art.params["workers"] == 2
    assert art.metrics["epochs_run"] == 2 and np.isfinite(art.item_factors).all()
    assert art.metrics["gate"]["candidate"]["users"] > 100


def test_a_worker_never_loads_spark_or_torch_distributed() -> None:
    code = ("import sys; import stream.worker.start, stream.worker.app, stream.api.app; "
            "print(sorted(m for m in sys.modules if m == 'pyspark' or m.startswith(('pyspark.', 'offline.ddp', "
            "'offline.spark_als'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_spark_slice_has_each_kind_of_row(lastfm_import, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the fixture the Spark comparison relies on really holds skips, partial plays and a duplicate
    log = _log(tmp_path, lastfm_import.events_path, users=250)
    with log.connect() as con:
        raw = con.sql("SELECT * FROM raw_events").to_arrow_table()
    assert pc.sum(pc.equal(raw.column("event"), "skip")).as_py() > 0
    assert raw.num_rows - len(log.read()) == 300
