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

from benchmarks import BENCHMARKS, run_benchmark


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def positive(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


def test_benchmarks_are_registered() -> None:
    assert {"index", "serve", "train"} <= set(BENCHMARKS)


def test_index_quick() -> None:
    from benchmarks import index

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


def test_train_quick(data_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import benchmarks
    from benchmarks import train

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(data_root))
    # which commit ran asks git, a process: tests/services/test_benchmarks.py checks it
    monkeypatch.setattr(benchmarks, "code", lambda: {"path": "here"})
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
    from benchmarks import train
    from stream.errors import ConfigError

    monkeypatch.setenv("MUSICREC_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(train, "REPO", tmp_path / "repo")
    with pytest.raises(ConfigError, match="MUSICREC_SHARED_DATA"):
        train.run(quiet(), quick=True)
