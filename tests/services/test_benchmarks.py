"""Smoke runs of the benchmarks (quick sizes): they run end to end and return sane figures.

These check that the programs work, never how fast anything is: speed is only ever read off
`musicrec bench`, next to a reference measured in the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from benchmarks import run_benchmark
from tests.unit.test_benchmarks import positive, quiet


def test_machine_names_the_code_that_ran() -> None:
    import subprocess

    import benchmarks

    ran = benchmarks.machine()["code"]
    root = Path(benchmarks.__file__).resolve().parent.parent
    assert ran["path"] == str(root)
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:  # no git on this machine: the path alone
        assert "commit" not in ran
        return
    if head.returncode == 0:  # a git checkout (CI's is one): the commit and whether it was modified
        assert ran["commit"] == head.stdout.strip()
        assert isinstance(ran["modified"], bool)
    else:
        assert "commit" not in ran


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


def test_scale_quick(services) -> None:  # type: ignore[no-untyped-def]
    import os

    from benchmarks import scale

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
             "worker_batches", "worker_users_written", "raw_aiokafka_events_per_s", "worker_events_per_cpu_s",
             "worker_cores_used", "bare_faust_inline_events_per_s", "ratio_to_inline", "cold_events_per_s",
             "cold_ratio")
    assert figures["events"] == 6_000
    stages_add_up(figures["worker_ms_per_batch"])


def stages_add_up(ms: dict[str, float]) -> None:
    """A batch's stages are parts of it: each took time, and together no more than the batch."""
    from benchmarks.live import STAGES

    assert ms["busy"] > 0 and all(ms[name] > 0 for name in STAGES), ms
    assert sum(ms[name] for name in STAGES) == pytest.approx(ms["busy"], rel=1e-6)


@pytest.mark.slow
def test_freshness_quick(services: Any, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import freshness

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(data_root))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", services.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    figures = run_benchmark("freshness", None, quiet(), quick=True)
    assert [p["rate"] for p in figures["phases"]] == list(freshness.TARGETS_MS)
    for phase in figures["phases"]:
        positive(phase, "achieved_rate", "p50_ms", "p99_ms", "redis_side_p50_ms", "users", "events_per_batch")
        assert phase["p50_ms"] <= phase["p95_ms"] <= phase["p99_ms"]
        assert phase["events"] == int(phase["rate"] * figures["seconds_per_phase"])
        stages_add_up(phase["worker_ms_per_batch"])


def test_restore_quick() -> None:
    from benchmarks import restore

    figures = restore.run(quiet(), quick=True)
    (size,) = figures["sizes"].values()
    whole, half = size["all 8 (one worker)"], size["4 of 8 (two workers)"]
    assert whole["events"] == restore.QUICK["sizes"][0] and 0 < half["events"] < whole["events"]
    assert 0 < half["users"] < whole["users"] and whole["version"] == half["version"] is not None
    positive(whole, "seconds", "cpu_s", "users")
