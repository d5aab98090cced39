"""`musicrec bench index`: FAISS Flat / IVF / HNSW over synthetic ALS-like song factors.

For each catalog size the three index kinds are built exactly as ``SongIndex`` builds them
(``index_manager.song_index._make_faiss``: Flat and HNSW inside an ``IndexIDMap2``, IVF holding the
ids itself; ids are 63-bit ``song_keys``), so the figures are those of the project's defaults.
The search-time knob of each (IVF ``nprobe``, HNSW ``efSearch``) is then swept to show the
recall/QPS trade-off.

Figures per index: build time (all cores), size, single-thread QPS (batches of queries, one OpenMP
thread), recall@10 against exact search, single-query latency, the time for a song added while
serving to become searchable, and the cost of removing / replacing one song where FAISS supports it.
The references, measured in the same run: numpy's single-thread matrix product over the whole
catalog (scores only, no top-k) and the exact Flat index.

The vectors are synthetic (see :func:`synthetic_factors`); recall is measured, not assumed.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks.common import (
    current_rss_mb,
    finish_context,
    percentiles_ms,
    print_table,
    run_context,
    stopwatch,
)
from index_manager import song_index
from index_manager.keys import song_keys

DIM = 64
K = 10
TARGET_RECALL = 0.95
TARGET_QPS = 5_000

FULL: dict[str, Any] = {"sizes": (100_000, 1_000_000), "queries": 1_000, "min_seconds": 0.6, "probes": 20,
        "flat_scaling": (5_000, 10_000, 20_000, 50_000)}
QUICK: dict[str, Any] = {"sizes": (2_000, 8_000), "queries": 200, "min_seconds": 0.05, "probes": 5,
                         "flat_scaling": (1_000,)}

EF_SEARCH = (16, 32, 48, 64, 96, 128, 192)
NPROBE = (4, 8, 16, 32, 64, 128, 256)


def synthetic_factors(n_songs: int, n_users: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Song and user vectors shaped like implicit-ALS factors; seeded, so every run sees the same data.

    What makes ALS factors hard or easy for approximate search is reproduced:

    * taste clusters (genres): song directions scatter around ~n/200 (at most 1000) centres whose
      sizes fall off like a power law, on a decaying spectrum rather than isotropic noise;
    * a shared "popularity" direction that every song and user leans towards;
    * log-normal norms (ALS gives popular songs long vectors, rare ones short), so the top of a
      dot-product ranking is dominated by long vectors, as in real catalogs;
    * users mix two to three genres plus the popularity direction.

    The constants were fitted to 64-factor implicit ALS trained on hetrec2011-lastfm-2k (17.6k
    artists): the norm percentiles and the mean-direction share match, and HNSW's recall at
    efSearch 16/32/64 on the synthetic set is within 0.01 of its recall on the real factors.
    IVF recall on the synthetic set is ~0.1 lower than on the real one, so IVF figures are
    pessimistic rather than flattering.
    """
    rng = np.random.default_rng(seed)
    spectrum = (1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)).astype(np.float32)
    n_clusters = int(min(1000, max(16, n_songs // 200)))
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) * spectrum
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    popular = rng.standard_normal(dim).astype(np.float32)
    popular /= np.linalg.norm(popular)
    weight = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    weight /= weight.sum()

    def noise(rows: int) -> np.ndarray:
        z = rng.standard_normal((rows, dim), dtype=np.float32) * spectrum
        return z * np.float32(0.5 / np.sqrt(np.mean(np.sum(z * z, axis=1))))

    songs = centres[rng.choice(n_clusters, size=n_songs, p=weight)] + noise(n_songs) + 0.3 * popular
    songs /= np.linalg.norm(songs, axis=1, keepdims=True)
    songs *= rng.lognormal(-2.9, 0.7, size=(n_songs, 1)).astype(np.float32)

    tastes = rng.choice(n_clusters, size=(n_users, 3), p=weight)
    mix = rng.dirichlet(np.ones(3), size=n_users).astype(np.float32)
    users = np.einsum("uk,ukd->ud", mix, centres[tastes]) + noise(n_users) + 0.3 * popular
    return np.ascontiguousarray(songs, np.float32), np.ascontiguousarray(users, np.float32)


def exact_top_k(songs: np.ndarray, users: np.ndarray, k: int = K, chunk: int = 32_768) -> np.ndarray:
    """Row numbers of each user's exact top-k songs by inner product (ground truth).

    A full argpartition over n songs per user costs more than the matrix product itself at 1M
    songs, so the running k-th best score of each user filters every chunk first and only the few
    songs above it are merged.
    """
    head = min(len(songs), max(k, 4096))
    scores = users @ songs[:head].T
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(scores, best, 1)
    for start in range(head, len(songs), chunk):
        scores = users @ songs[start:start + chunk].T
        rows, cols = np.nonzero(scores > best_scores.min(axis=1, keepdims=True))
        for r in np.unique(rows):
            cand = cols[rows == r]
            s = np.concatenate([best_scores[r], scores[r, cand]])
            i = np.concatenate([best[r], cand + start])
            top = np.argpartition(-s, k - 1)[:k]
            best_scores[r], best[r] = s[top], i[top]
    return best


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k found in the returned top-k (ids on both sides)."""
    k = truth.shape[1]
    hits = (found[:, :k, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


class _OneThread:
    """faiss search on one OpenMP thread (the serving figure), restoring the previous setting."""

    def __enter__(self) -> None:
        self._before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self._before)


def _throughput(index: faiss.Index, users: np.ndarray, truth_keys: np.ndarray, min_seconds: float) -> dict[str, Any]:
    """Single-thread QPS over batches of 20 queries, and recall@10 over the queries searched.

    Slow indexes (Flat at 1M) stop after ``min_seconds`` rather than searching every query: their
    QPS is steady by then, and their recall is exact anyway.
    """
    done, found = 0, []
    with _OneThread(), stopwatch() as t:
        start = time.perf_counter()
        while done < len(users):
            _, keys = index.search(users[done:done + 20], K)
            found.append(keys)
            done += len(keys)
            if time.perf_counter() - start >= min_seconds and done >= 20:
                break
    keys = np.concatenate(found)
    return {"qps_1thread": done / t[0], "recall_at_10": recall_at_k(keys, truth_keys[:done]), "queries": done}


def _latency(index: faiss.Index, users: np.ndarray, min_seconds: float) -> dict[str, float]:
    """One query per call, as a reader serving a single user would."""
    times = []
    with _OneThread():
        deadline = time.perf_counter() + min_seconds
        for i in range(min(len(users), 500)):
            t0 = time.perf_counter()
            index.search(users[i:i + 1], K)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() >= deadline and i >= 10:
                break
    p = percentiles_ms(np.array(times))
    return {"latency_p50_ms": p["p50"], "latency_p99_ms": p["p99"]}


def _add_remove(index: faiss.Index, kind: str, songs: np.ndarray, probes: int) -> dict[str, Any]:
    """Songs arriving while serving: add one, then search for it; then remove / replace it.

    One song per call, as the catalog stream delivers them; batching additions is cheaper where a
    call has a fixed cost (HNSW allocates a lock per node on every add, so one add is O(songs)).

    Each probe song is made twice as long as any catalog song, so searching with its own vector
    must return it first: the search proves it became searchable, it is not just timed.
    """
    rng = np.random.default_rng(1)
    scale = 2.0 * float(np.linalg.norm(songs, axis=1).max())
    fresh = rng.standard_normal((probes, songs.shape[1])).astype(np.float32)
    fresh *= scale / np.linalg.norm(fresh, axis=1, keepdims=True)
    keys = song_keys(np.array([f"bench-new-song-{i}" for i in range(probes)], dtype=object))
    add, searchable, found = [], [], 0
    with _OneThread():
        for i in range(probes):
            t0 = time.perf_counter()
            index.add_with_ids(fresh[i:i + 1], keys[i:i + 1])
            t1 = time.perf_counter()
            _, got = index.search(fresh[i:i + 1], 1)
            t2 = time.perf_counter()
            add.append(t1 - t0)
            searchable.append(t2 - t0)
            found += int(got[0, 0] == keys[i])
        out: dict[str, Any] = {"add_ms": 1000 * float(np.mean(add)),
                               "add_to_searchable_ms": 1000 * float(np.mean(searchable)),
                               "added_found_share": found / probes}
        remove, update = [], []
        # removing from a 1M IndexIDMap2 rebuilds its reverse map (~0.4 s): a few probes are enough
        deadline = time.perf_counter() + 2.0
        try:
            for i in range(probes):
                if i >= 3 and time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                index.remove_ids(keys[i:i + 1])  # type: ignore[arg-type]  # SWIG accepts arrays
                remove.append(time.perf_counter() - t0)
                # a replaced vector is what SongIndex.add does for a song already present
                index.add_with_ids(fresh[i:i + 1] * 0.5, keys[i:i + 1])
                t0 = time.perf_counter()
                index.remove_ids(keys[i:i + 1])  # type: ignore[arg-type]
                index.add_with_ids(fresh[i:i + 1], keys[i:i + 1])
                update.append(time.perf_counter() - t0)
                index.remove_ids(keys[i:i + 1])  # type: ignore[arg-type]
        except RuntimeError:
            out.update(remove_ms=None, update_ms=None, remove_supported=False,
                       remove_note=f"{kind}: FAISS cannot delete from this index; replaced at the next retrain")
        else:
            out.update(remove_ms=1000 * float(np.mean(remove)), update_ms=1000 * float(np.mean(update)),
                       remove_supported=True)
    return out


def _inner(index: faiss.Index) -> Any:
    """The index under the IndexIDMap2 (IVF is not wrapped: it holds the song keys itself)."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def _params(kind: str, index: faiss.Index) -> dict[str, Any]:
    inner = _inner(index)
    if kind == "hnsw":
        return {"M": int(inner.hnsw.nb_neighbors(1)), "efConstruction": int(inner.hnsw.efConstruction),
                "efSearch": int(inner.hnsw.efSearch)}
    if kind == "ivf":
        return {"nlist": int(inner.nlist), "nprobe": int(inner.nprobe)}
    return {}


def _sweep(kind: str, index: faiss.Index, users: np.ndarray, truth_keys: np.ndarray,
           min_seconds: float) -> list[dict[str, Any]]:
    inner = _inner(index)
    values: tuple[int, ...]
    if kind == "hnsw":
        knob, values, before = "efSearch", EF_SEARCH, inner.hnsw.efSearch
    elif kind == "ivf":
        knob, values, before = "nprobe", tuple(v for v in NPROBE if v <= inner.nlist), inner.nprobe
    else:
        return []
    rows = []
    for value in values:
        if kind == "hnsw":
            inner.hnsw.efSearch = value
        else:
            inner.nprobe = value
        rows.append({"param": knob, "value": value, **_throughput(index, users, truth_keys, min_seconds / 3)})
    if kind == "hnsw":
        inner.hnsw.efSearch = before
    else:
        inner.nprobe = before
    return rows


def _one_index(kind: str, songs: np.ndarray, keys: np.ndarray, users: np.ndarray, truth_keys: np.ndarray,
               sizes: dict[str, Any]) -> dict[str, Any]:
    rss_before = current_rss_mb()
    with stopwatch() as t:  # all cores: a retrain builds the index offline
        index = song_index._make_faiss(kind, songs.shape[1], songs)
        index.add_with_ids(songs, keys)
    out: dict[str, Any] = {"build_s": t[0], "params": _params(kind, index)}
    out["memory_mb"] = len(faiss.serialize_index(index)) / 2**20
    out["rss_delta_mb"] = max(0.0, current_rss_mb() - rss_before)
    out.update(_throughput(index, users, truth_keys, sizes["min_seconds"]))
    out.update(_latency(index, users, sizes["min_seconds"]))
    out["sweep"] = _sweep(kind, index, users, truth_keys, sizes["min_seconds"])
    out.update(_add_remove(index, kind, songs, sizes["probes"]))
    return out


def _numpy_qps(songs: np.ndarray, users: np.ndarray, min_seconds: float) -> float:
    """Reference: one BLAS thread scoring the whole catalog for a batch of users (no top-k)."""
    done = 0
    with threadpool_limits(1), stopwatch() as t:
        start = time.perf_counter()
        while done < len(users):
            _ = users[done:done + 20] @ songs.T
            done += 20
            if time.perf_counter() - start >= min_seconds:
                break
    return min(done, len(users)) / t[0]


def _one_size(console: Console, n: int, sizes: dict[str, Any]) -> dict[str, Any]:
    with stopwatch() as t_data:
        songs, users = synthetic_factors(n, sizes["queries"], seed=n)
        keys = song_keys(np.array([f"bench-song-{i}" for i in range(n)], dtype=object))
    with stopwatch() as t_exact:
        truth_keys = keys[exact_top_k(songs, users)]
    out: dict[str, Any] = {"data_s": t_data[0], "exact_s": t_exact[0],
                           "numpy_qps_1thread": _numpy_qps(songs, users, sizes["min_seconds"])}
    for kind in ("flat", "ivf", "hnsw"):
        out[kind] = _one_index(kind, songs, keys, users, truth_keys, sizes)
        out[kind]["qps_vs_flat"] = out[kind]["qps_1thread"] / out["flat"]["qps_1thread"]
        out[kind]["qps_vs_numpy"] = out[kind]["qps_1thread"] / out["numpy_qps_1thread"]
    _print_size(console, n, out)
    return out


def _flat_scaling(songs_n: tuple[int, ...], queries: int, min_seconds: float) -> dict[str, float]:
    """Flat QPS at small catalogs: where exact search stops meeting the QPS target (FLAT_MAX_SONGS)."""
    out = {}
    for n in songs_n:
        songs, users = synthetic_factors(n, queries, seed=n)
        index = faiss.IndexFlatIP(songs.shape[1])
        index.add(songs)
        done = 0
        with _OneThread(), stopwatch() as t:
            start = time.perf_counter()
            while done < len(users):
                index.search(users[done:done + 20], K)
                done += 20
                if time.perf_counter() - start >= min_seconds:
                    break
        out[str(n)] = min(done, len(users)) / t[0]
    return out


def _print_size(console: Console, n: int, f: dict[str, Any]) -> None:
    kinds = ("flat", "ivf", "hnsw")

    def row(label: str, key: str, ref: Any = None) -> list[Any]:
        return [label, ref, *(f[k][key] for k in kinds)]

    short = {"efConstruction": "efC", "efSearch": "efS"}
    params = ["params", "scores only", *(", ".join(f"{short.get(k, k)}={v}" for k, v in f[kind]["params"].items())
                                         or "exact" for kind in kinds)]
    print_table(console, f"index: {n:,} songs x {DIM}-d, inner product (search on 1 thread)",
                ["figure", "numpy (ref)", *kinds],
                [params,
                 row("QPS, 1 thread", "qps_1thread", f["numpy_qps_1thread"]),
                 row("  x Flat", "qps_vs_flat"),
                 row("recall@10", "recall_at_10"),
                 row("1-query p50 ms", "latency_p50_ms"),
                 row("1-query p99 ms", "latency_p99_ms"),
                 row("build s (2 threads)", "build_s"),
                 row("size MB (serialized)", "memory_mb"),
                 row("add -> searchable ms", "add_to_searchable_ms"),
                 row("remove ms", "remove_ms"),
                 row("replace ms", "update_ms")],
                caption="HNSW cannot remove or replace a vector ('-'); add -> searchable = add_with_ids + "
                        "a search that returns the new song")
    sweep_rows = [[kind, f"{s['param']}={s['value']}", s["qps_1thread"], s["qps_1thread"] / f["flat"]["qps_1thread"],
                   s["recall_at_10"]] for kind in ("ivf", "hnsw") for s in f[kind]["sweep"]]
    print_table(console, f"index: recall / QPS trade-off at {n:,} songs", ["index", "search param", "QPS",
                                                                           "x Flat", "recall@10"], sweep_rows)


def _defaults(figures: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    largest = sizes[-1]
    kind = song_index.choose_kind(largest)
    chosen = figures[str(largest)][kind]
    out: dict[str, Any] = {
        "flat_max_songs": song_index.FLAT_MAX_SONGS,
        "choose_kind": {str(n): song_index.choose_kind(n) for n in sizes},
        "target": {"recall_at_10": TARGET_RECALL, "qps_1thread": TARGET_QPS, "songs": largest},
        "at_largest": {"kind": kind, "params": chosen["params"], "recall_at_10": chosen["recall_at_10"],
                       "qps_1thread": chosen["qps_1thread"]},
    }
    out["target_met"] = chosen["recall_at_10"] >= TARGET_RECALL and chosen["qps_1thread"] >= TARGET_QPS
    # the cheapest swept setting that reaches the recall target, for each approximate index
    best = {}
    for k in ("ivf", "hnsw"):
        ok = [s for s in figures[str(largest)][k]["sweep"] if s["recall_at_10"] >= TARGET_RECALL]
        best[k] = max(ok, key=lambda s: s["qps_1thread"]) if ok else None
    out["fastest_at_target_recall"] = best
    return out


def run(console: Console, quick: bool) -> dict[str, Any]:
    context = run_context()
    sizes = QUICK if quick else FULL
    figures: dict[str, Any] = {}
    for n in sizes["sizes"]:
        figures[str(n)] = _one_size(console, n, sizes)
    scaling = _flat_scaling(sizes["flat_scaling"], sizes["queries"], sizes["min_seconds"] / 2)
    defaults = _defaults(figures, sizes["sizes"])
    result: dict[str, Any] = {"dim": DIM, "k": K, "queries": sizes["queries"], "sizes": figures,
                              "flat_qps_by_size": scaling, "defaults": defaults}
    result.update(finish_context(context))
    a = defaults["at_largest"]
    print_table(console, "index: defaults chosen by catalog size (index_manager/song_index.py)",
                ["figure", "value"],
                [["FLAT_MAX_SONGS", defaults["flat_max_songs"]],
                 *[[f"choose_kind({int(n):,})", k] for n, k in defaults["choose_kind"].items()],
                 *[[f"flat QPS at {int(n):,} songs", q] for n, q in scaling.items()],
                 [f"default at {int(sizes['sizes'][-1]):,}", f"{a['kind']} {a['params']}"],
                 ["  recall@10 / QPS (1 thread)", f"{a['recall_at_10']:.3f} / {a['qps_1thread']:,.0f}"],
                 [f"target recall>={TARGET_RECALL} at QPS>={TARGET_QPS:,}", defaults["target_met"]]],
                caption=f"peak RSS {result['peak_rss_mb']:.0f} MiB ({result['peak_rss_source']}); "
                        f"load avg {result['load_avg_1m_start']} -> {result['load_avg_1m_end']}")
    return result
