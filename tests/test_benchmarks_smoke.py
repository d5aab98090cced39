"""Smoke runs of the benchmarks (quick sizes): they run end to end and return sane figures.

These check that the programs work, never how fast anything is: speed is only ever read off
`musicrec bench`, next to a reference measured in the same run.
"""

from __future__ import annotations

import io
import math
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
    assert {"index", "serve"} <= set(BENCHMARKS)


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
