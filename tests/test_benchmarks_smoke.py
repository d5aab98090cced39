"""Smoke runs of the benchmarks (quick sizes): they run end to end and return sane figures.

These check that the programs work, never how fast anything is: speed is only ever read off
`musicrec bench`, next to a reference measured in the same run.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from stream.benchmarks import BENCHMARKS, run_benchmark


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def positive(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


def test_benchmarks_are_registered() -> None:
    assert {"index", "serve", "train"} <= set(BENCHMARKS)


def test_index_quick() -> None:
    from stream.benchmarks import index

    figures = index.run(quiet(), quick=True)
    assert set(figures["sizes"]) == {str(n) for n in index.QUICK["sizes"]}
    for per_size in figures["sizes"].values():
        positive(per_size, "numpy_qps_1thread", "exact_s")
        for kind in ("flat", "ivf", "hnsw"):
            f = per_size[kind]
            positive(f, "build_s", "memory_mb", "qps_1thread", "recall_at_10", "latency_p50_ms",
                     "add_to_searchable_ms")
            assert 0 < f["recall_at_10"] <= 1
            assert f["added_found_share"] == 1.0  # an added song is returned by the next search
            assert isinstance(f["params"], dict)
        assert per_size["flat"]["recall_at_10"] == pytest.approx(1.0, abs=1e-3)
        positive(per_size["flat"], "remove_ms", "update_ms")
        positive(per_size["ivf"], "remove_ms", "update_ms")
        assert per_size["hnsw"]["remove_ms"] is None and per_size["hnsw"]["remove_supported"] is False
        assert {s["param"] for s in per_size["hnsw"]["sweep"]} == {"efSearch"}
        assert all(0 < s["recall_at_10"] <= 1 and s["qps_1thread"] > 0 for s in per_size["ivf"]["sweep"])
    assert {"flat_max_songs", "choose_kind", "target", "at_largest", "target_met"} <= set(figures["defaults"])
    positive(figures, "peak_rss_mb")


def test_serve_quick(services: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    out = tmp_path / "serve.json"
    figures = run_benchmark("serve", out, quiet(), quick=True)
    positive(figures, "get_p50_ms", "get_p99_ms", "pipelined_per_s", "raw_get_p50_ms", "raw_get_p99_ms",
             "raw_pipelined_per_s", "cpu_us_per_lookup", "raw_cpu_us_per_lookup", "write_per_s", "peak_rss_mb")
    assert figures["get_p50_ms"] <= figures["get_p99_ms"]
    assert 0 < figures["fallback_share"] < 1  # unknown users were served the popularity list
    assert figures["redis"] == "REDIS_URL" and out.exists()
    # the benchmark cleans up after itself in a shared Redis
    from stream.redis_store import connect

    assert not any(k.startswith(b"bench-") for k in connect(services.redis_url).scan_iter(count=1000))


def test_train_quick(data_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from stream.benchmarks import train

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(data_root))
    out = tmp_path / "train.json"
    figures = run_benchmark("train", out, quiet(), quick=True)
    positive(figures, "als_1m_s", "implicit_als_1m_s", "ratio", "als_aggregate_s", "als_matrix_s", "retrain_1m_s",
             "from_events_s", "aggregate_events_per_s", "from_events_events_per_s",
             "ncf_torch_epoch_s", "ncf_mlx_epoch_s", "ncf_mlx_vs_torch", "total_s", "peak_rss_mb")
    assert figures["events"] == train.QUICK["events"] and figures["lastfm_dir"].startswith(str(data_root))
    # the numpy aggregation timed at 1M gives exactly the table Interactions.from_events gives
    assert figures["aggregate_matches_from_events"] is True
    # both NeuMF backends trained from the same weights on the same samples: the same loss
    assert figures["ncf"]["torch"]["loss"] == pytest.approx(figures["ncf"]["mlx"]["loss"], rel=1e-3)
    loo = figures["loo"]
    assert list(loo["models"]) == train.LOO_MODELS and loo["users"] > 0
    for m in loo["models"].values():
        assert 0 <= m["ndcg@10"] <= m["hr@10"] <= 1 and 0 <= m["recall@10"] <= 1
    assert out.exists()


def test_train_names_missing_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from index_manager.errors import ConfigError
    from stream.benchmarks import train

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(train, "REPO", tmp_path / "repo")
    with pytest.raises(ConfigError, match="MUSICREC_SHARED_DATA"):
        train.run(quiet(), quick=True)


def test_scale_quick(services) -> None:  # type: ignore[no-untyped-def]
    import os

    from rich.console import Console

    from stream.benchmarks import scale

    os.environ["REDIS_URL"] = services.redis_url
    try:
        f = scale.run(Console(quiet=True), quick=True)
    finally:
        del os.environ["REDIS_URL"]
    for name in ("ivfpq", "ivfpq_refine", "hnsw_reference"):
        assert 0 < f[name]["recall_at_10"] <= 1 and f[name]["qps_1thread"] > 0
    assert f["ivfpq"]["bytes_per_song"] < f["hnsw_reference"]["bytes_per_song"]
    assert f["redis_bytes_per_user"] >= f["value_json_bytes"] > 0
    assert f["state_users"] == 2_000 and f["state_bytes_per_user"] > 32 * f["state_rows_per_user"] > 0


@pytest.mark.slow
def test_ingest_quick(services: Any, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(data_root))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", services.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    figures = run_benchmark("ingest", None, quiet(), quick=True)
    positive(figures, "events_per_s", "bare_faust_events_per_s", "ratio", "producer_events_per_s",
             "worker_batches", "worker_users_written")
    assert figures["events"] == 6_000


@pytest.mark.slow
def test_freshness_quick(services: Any, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.benchmarks import freshness

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(data_root))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", services.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    figures = run_benchmark("freshness", None, quiet(), quick=True)
    assert [p["rate"] for p in figures["phases"]] == list(freshness.TARGETS_MS)
    for phase in figures["phases"]:
        positive(phase, "achieved_rate", "p50_ms", "p99_ms", "redis_side_p50_ms", "users")
        assert phase["p50_ms"] <= phase["p95_ms"] <= phase["p99_ms"]
        assert phase["events"] == int(phase["rate"] * figures["seconds_per_phase"])
