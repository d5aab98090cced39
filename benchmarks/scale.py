"""``musicrec bench scale``: the measured inputs of docs/SCALING.md.

- IVF-PQ at 1M synthetic 64-d song vectors (the index that fits 10M songs in one worker's memory):
  build time, bytes per song, single-thread QPS and recall@10 against exact search, with and without
  an exact re-rank of the PQ shortlist, next to HNSW at the same size as the reference.
- Online state per user (``HistoryStore``: decayed play/skip engagement per song) after folding in a
  synthetic log in batches, traced with ``tracemalloc`` (numpy reports its buffers to it).
- Redis memory of one user's stored list (``MEMORY USAGE`` of a real value, k=20), next to the raw
  JSON length as the reference.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np
from rich.console import Console

from benchmarks.common import finish_context, print_table, run_context
from benchmarks.index import exact_top_k, recall_at_k, synthetic_factors
from stream.redis_store import RedisKeys, connect, encode_value
from stream.services import EmbeddedServices
from stream.settings import load_settings

PQ_BYTES = 32  # sub-quantisers of 8 bits: 64 dims / 32 = 2 dims each
QUERIES = 1000


def _qps(index: faiss.Index, users: np.ndarray, k: int, seconds: float = 2.0) -> tuple[float, np.ndarray]:
    faiss.omp_set_num_threads(1)
    _, found = index.search(users, k)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        index.search(users[:100], k)
        done += 100
    return done / (time.perf_counter() - started), found


def _ivfpq(songs: np.ndarray, users: np.ndarray, truth: np.ndarray, refine: bool) -> dict[str, Any]:
    n, dim = songs.shape
    nlist = int(4 * np.sqrt(n))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.pq.cp.niter = 10  # PQ k-means converges early; FAISS's default 25 triples training time
    index: faiss.Index = faiss.IndexRefineFlat(ivf) if refine else ivf
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    sample = songs[np.random.default_rng(0).choice(n, min(n, max(40 * nlist, 65_536)), replace=False)]
    index.train(sample)
    index.add(songs)
    build_s = time.perf_counter() - started
    ivf.nprobe = max(1, nlist // 8)
    if refine:
        index.k_factor = 8  # type: ignore[attr-defined]  # IndexRefineFlat's; re-rank 8k PQ candidates with exact inner products
    qps, found = _qps(index, users, 10)
    code_bytes = ivf.code_size + 8  # PQ code + 64-bit id per song in the inverted lists
    return {"build_s": build_s, "qps_1thread": qps, "recall_at_10": recall_at_k(found, truth),
            "bytes_per_song": code_bytes + (4 * dim if refine else 0), "nlist": nlist, "nprobe": ivf.nprobe,
            "pq_bytes": PQ_BYTES}


def _hnsw(songs: np.ndarray, users: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from index_manager.song_index import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH_LARGE, HNSW_M

    faiss.omp_set_num_threads(2)
    index = faiss.IndexHNSWFlat(songs.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    started = time.perf_counter()
    index.add(songs)
    build_s = time.perf_counter() - started
    index.hnsw.efSearch = HNSW_EF_SEARCH_LARGE
    qps, found = _qps(index, users, 10)
    return {"build_s": build_s, "qps_1thread": qps, "recall_at_10": recall_at_k(found, truth),
            "bytes_per_song": 4 * songs.shape[1] + 8 * 2 * HNSW_M + 8}


def _state_bytes(users: int, events_per_user: int) -> dict[str, float]:
    """Bytes of online state per user, with ``events_per_user`` events each over 10x as many songs."""
    import tracemalloc

    from online_models.batch import EventBatch
    from online_models.history import HistoryStore

    rng = np.random.default_rng(0)
    n = users * events_per_user
    user_ids = np.array([f"user-{u:09d}" for u in rng.integers(0, users, n)], dtype=object)
    song_ids = np.array([f"{s:022d}" for s in rng.zipf(1.3, n) % (10 * users)], dtype=object)
    batch = EventBatch.from_columns(user_ids, song_ids, np.where(rng.random(n) < 0.15, "skip", "play").astype(object),
                                    np.sort(rng.uniform(1.7e9, 1.7e9 + 86400 * 30, n)), None, None)
    tracemalloc.start()
    store = HistoryStore()
    for start in range(0, n, 2000):
        store.update(batch.take(slice(start, start + 2000)))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = len(store.gather(store.users()))
    return {"state_users": len(store.users()), "state_rows_per_user": rows / len(store.users()),
            "state_bytes_per_user": current / len(store.users())}


def _redis_value_bytes(k: int = 20) -> dict[str, float]:
    url = load_settings().stream.redis_url
    services = None if url else EmbeddedServices(kafka=False).start()
    try:
        client = connect(url or services.redis_url)  # type: ignore[union-attr]
        keys = RedisKeys("bench-scale")
        songs = [f"{i:022d}" for i in range(k)]  # Spotify-length ids
        value = encode_value("u" * 12, songs, np.linspace(1, 0, k).tolist(), [f"because you played {songs[0]}"] * k,
                             "20261123T101500123456Z-als", time.time(),
                             {"event_id": "e" * 36, "ts": time.time(), "produced_at": time.time()})
        client.set(keys.recs("u" * 12), value)
        usage = int(client.memory_usage(keys.recs("u" * 12)) or 0)
        client.delete(keys.recs("u" * 12))
        return {"redis_bytes_per_user": usage, "value_json_bytes": len(value), "k": k}
    finally:
        if services is not None:
            services.stop()


def run(console: Console, quick: bool) -> dict[str, Any]:
    context = run_context()
    n = 5_000 if quick else 1_000_000
    songs, users = synthetic_factors(n, 200 if quick else QUERIES)
    truth = exact_top_k(songs, users)
    figures: dict[str, Any] = {"songs": n, "ivfpq": _ivfpq(songs, users, truth, refine=False),
                               "ivfpq_refine": _ivfpq(songs, users, truth, refine=True),
                               "hnsw_reference": _hnsw(songs, users, truth), **_redis_value_bytes(),
                               **_state_bytes(2_000 if quick else 50_000, 20)}
    figures.update(finish_context(context))
    rows = [[name, f["build_s"], f["qps_1thread"], f["recall_at_10"], f["bytes_per_song"]]
            for name, f in (("IVF-PQ", figures["ivfpq"]), ("IVF-PQ + exact re-rank", figures["ivfpq_refine"]),
                            ("HNSW (reference)", figures["hnsw_reference"]))]
    print_table(console, f"scale: {n:,} songs, 64-d", ["index", "build s", "QPS (1 thread)", "recall@10",
                                                        "bytes/song"], rows,
                caption=f"online state: {figures['state_bytes_per_user']:,.0f} B per user "
                        f"({figures['state_rows_per_user']:.1f} songs each); "
                        f"Redis: {figures['redis_bytes_per_user']} B per user list of {figures['k']} "
                        f"(JSON {figures['value_json_bytes']} B); peak RSS {figures['peak_rss_mb']:.0f} MiB")
    return figures
