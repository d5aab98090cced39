"""The song space of one model version: keys, names, factor rows and a FAISS IndexIDMap2 over them."""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np

from index_manager.key_table import KeyTable
from index_manager.keys import song_keys

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]


class IndexFailure(Exception):
    """FAISS refused an operation (wrong dimension, bad ids, unsupported removal...)."""


# Exact search costs O(songs) per query (one thread scores ~1e8 64-d songs/s), so past ~20k songs
# a Flat index drops below the 5k single-thread QPS target, while HNSW keeps recall@10 >= 0.95 far
# above it (figures and method: benchmarks/README.md, `musicrec bench index`).
FLAT_MAX_SONGS = 20_000

# HNSW: built once per model version (retrain), searched by every worker. On ALS-like factors at
# 1M songs, M=16 with efConstruction=64 reached recall@10 0.95 at 1.6-2x the single-thread QPS
# of M=32 (fewer links to score per hop) and built in ~2/3 of the time; M=24/efConstruction=48
# was in between. efSearch grows with the catalog because recall at a fixed efSearch falls as the
# graph grows.
# Flat searches asking for this many songs or more are answered by one BLAS product + argpartition
# (~2x faster than IndexFlatIP at k ~ 100 on 11k songs, measured); smaller k stay with FAISS.
FLAT_NUMPY_MIN_K = 32

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH_SMALL = 48  # up to HNSW_LARGE songs
HNSW_EF_SEARCH_LARGE = 80
HNSW_LARGE = 300_000

# IVF (only when asked for: on dot-product ALS factors, whose top results are long vectors spread
# over many cells, it needs to probe a large share of the cells for recall 0.95).
IVF_TRAIN_PER_LIST = 40  # k-means sample per list; FAISS wants >= 39, more only slows training
IVF_NITER = 10


def choose_kind(n_songs: int) -> Literal["flat", "hnsw", "ivf"]:
    return "flat" if n_songs <= FLAT_MAX_SONGS else "hnsw"


def _make_faiss(kind: str, dim: int, train: np.ndarray) -> faiss.Index:
    """An empty index of ``kind`` taking song keys as ids, sized for ``len(train)`` songs (IVF trains on them).

    Flat and HNSW sit in an IndexIDMap2; IVF holds the ids itself (see below).
    """
    n = len(train)
    if kind == "flat":
        inner: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH_SMALL if n <= HNSW_LARGE else HNSW_EF_SEARCH_LARGE
    elif kind == "ivf":
        if n == 0:
            raise IndexFailure("an IVF index needs training vectors")
        nlist = max(1, min(n, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.cp.niter = IVF_NITER
        sample = min(n, IVF_TRAIN_PER_LIST * nlist)
        # k-means over all of a 1M catalog takes minutes; a seeded sample keeps builds reproducible
        rows = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False)) if sample < n else slice(None)
        inner.train(np.ascontiguousarray(train[rows], dtype=np.float32))
        inner.nprobe = max(1, nlist // 16)
        # IVF stores 64-bit ids itself, so it is not wrapped: IndexIDMap2 renumbers its id table on
        # remove_ids but IVF keeps the old positions in its lists, so after one replaced song every
        # later result maps to the wrong key (and FAISS aborts on the next removal). The hash table
        # also makes removing a song O(1) instead of a scan of every list.
        inner.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # SWIG enum
        return inner
    else:
        raise ValueError(f"unknown index kind {kind!r}: expected auto, flat, hnsw or ivf")
    return faiss.IndexIDMap2(inner)


def _check_vectors(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]}, the index has {dim}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must be floating point, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return out


def exact_top(q: np.ndarray, factors: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: the same answer as FAISS's flat scan, which spends its time in
    heap updates once k is large (the worker asks for k + what each user already heard)."""
    scores = q @ factors.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    return keys[rows], np.take_along_axis(top, order, axis=1)


class SongIndex:
    """Songs of one model version, searchable by inner product.

    Rows of ``factors`` line up with ``keys`` and ``names``; FAISS ids are the stable song keys, so
    results map back to names without a per-version id table. Songs can be appended while serving
    (new catalog songs); a new version is built aside and swapped whole.
    """

    def __init__(self, names: np.ndarray, factors: np.ndarray, kind: IndexKind = "auto",
                 faiss_index: faiss.Index | None = None) -> None:
        names = np.asarray(names, dtype=object)
        factors = _check_vectors(factors, None, "song factors")
        if names.ndim != 1 or len(names) != len(factors):
            raise ValueError(f"{len(names)} names for {len(factors)} factor rows")
        if len(factors) == 0:
            raise ValueError("a song index needs at least one song")
        keys = song_keys(names)
        if len(np.unique(keys)) != len(keys):
            raise ValueError("song names are not unique")
        self.dim = int(factors.shape[1])
        self.kind = choose_kind(len(names)) if kind == "auto" else kind
        self._names = names
        self._keys = keys
        self._factors = factors
        self._rows = KeyTable(keys)  # key -> row of ``factors``
        self._unit: np.ndarray | None = None
        if faiss_index is None:
            faiss_index = _make_faiss(self.kind, self.dim, factors)
            try:
                faiss_index.add_with_ids(factors, keys)
            except RuntimeError as exc:
                raise IndexFailure(f"FAISS refused {len(keys)} songs: {exc}") from exc
        elif faiss_index.ntotal != len(keys) or faiss_index.d != self.dim:
            raise IndexFailure(f"FAISS index holds {faiss_index.ntotal}x{faiss_index.d}, "
                               f"expected {len(keys)}x{self.dim}")
        self._index = faiss_index
        self._hidden = np.empty(0, np.int64)  # sorted keys searches never return

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> np.ndarray:
        return self._keys

    @property
    def names(self) -> np.ndarray:
        return self._names

    @property
    def factors(self) -> np.ndarray:
        return self._factors

    @property
    def unit_factors(self) -> np.ndarray:
        """Factors scaled to unit length (cosine similarity), computed once per song set."""
        if self._unit is None:
            norms = np.linalg.norm(self._factors, axis=1, keepdims=True)
            self._unit = (self._factors / np.maximum(norms, 1e-12)).astype(np.float32)
        return self._unit

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in ``factors``, -1 where the song is not in this index."""
        return self._rows.lookup(keys)

    def names_of(self, keys: np.ndarray) -> np.ndarray:
        """Song names for keys (any shape); "" where unknown or -1."""
        keys = np.asarray(keys, dtype=np.int64)
        rows = self.rows(keys.ravel())
        out = np.where(rows >= 0, self._names[np.maximum(rows, 0)], "")
        return out.reshape(keys.shape)

    def add(self, names: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Append songs (searchable on return); songs already present get their vector replaced."""
        names = np.asarray(names, dtype=object)
        vectors = _check_vectors(vectors, self.dim, "song vectors")
        if names.ndim != 1 or len(names) != len(vectors):
            raise ValueError(f"{len(names)} names for {len(vectors)} vectors")
        keys = song_keys(names)
        _, first = np.unique(keys, return_index=True)
        if len(first) != len(keys):  # last write wins within one call
            last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
            names, vectors, keys = names[last], vectors[last], keys[last]
        rows = self.rows(keys)
        old = rows >= 0
        if old.any():
            try:
                self._index.remove_ids(keys[old])  # type: ignore[arg-type]  # SWIG accepts arrays
            except RuntimeError as exc:
                raise IndexFailure(f"a {self.kind} index cannot replace song vectors in place; "
                                   "they are replaced at the next retrain") from exc
            self._factors[rows[old]] = vectors[old]
        self._unit = None
        new = ~old
        if new.any():
            self._keys = np.concatenate([self._keys, keys[new]])
            self._names = np.concatenate([self._names, names[new]])
            self._factors = np.concatenate([self._factors, vectors[new]])
            self._rows.add(keys[new])
        try:
            self._index.add_with_ids(vectors, keys)
        except RuntimeError as exc:
            raise IndexFailure(f"FAISS refused {len(keys)} songs: {exc}") from exc
        return keys

    def hide(self, keys: np.ndarray) -> None:
        """Songs searches no longer return (a takedown); they keep their rows, so a version's
        factors, names and explanations stay whole. Keys of songs not (yet) here count too."""
        self._hidden = np.union1d(self._hidden, np.asarray(keys, np.int64))

    def unhide(self, keys: np.ndarray) -> None:
        self._hidden = np.setdiff1d(self._hidden, np.asarray(keys, np.int64))

    @property
    def hidden(self) -> np.ndarray:
        return self._hidden

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` songs per query row: (keys int64 [n,k], scores float32 [n,k]); -1/-inf pad.
        Hidden songs are left out (searched past: k plus as many as are hidden)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if len(self._hidden):
            keys, scores = self._search(queries, k + len(self._hidden))
            return _drop_keys(keys, scores, self._hidden, k)
        return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_vectors(queries, self.dim, "queries")
        if len(q) == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        kk = min(k, len(self._keys))
        if self.kind == "flat" and kk >= FLAT_NUMPY_MIN_K:
            keys, scores = exact_top(q, self._factors, self._keys, kk)
        else:
            scores, keys = self._index.search(q, kk)
        if keys.shape[1] < k:
            pad = k - keys.shape[1]
            keys = np.pad(keys, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        scores = np.where(keys >= 0, scores, -np.inf).astype(np.float32)
        return keys, scores

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self._index))


def _drop_keys(keys: np.ndarray, scores: np.ndarray, drop: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row without the keys in sorted ``drop``, order kept, cut (or -1/-inf padded) to ``k``."""
    pos = np.minimum(np.searchsorted(drop, keys), len(drop) - 1)
    gone = (drop[pos] == keys) | (keys < 0)
    order = np.argsort(gone, axis=1, kind="stable")[:, :k]
    keys = np.take_along_axis(np.where(gone, -1, keys), order, axis=1)
    scores = np.take_along_axis(np.where(gone, -np.inf, scores), order, axis=1).astype(np.float32)
    return keys, scores


def from_parts(names: np.ndarray, factors: np.ndarray, index_bytes: bytes | None) -> SongIndex:
    """Rebuild from stored parts; the stored FAISS index is used as-is when given."""
    if index_bytes is None:
        return SongIndex(names, factors)
    try:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
    except RuntimeError as exc:
        raise IndexFailure(f"stored FAISS index cannot be read: {exc}") from exc
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    kind: IndexKind = ("hnsw" if isinstance(inner, faiss.IndexHNSW)
                       else "ivf" if isinstance(inner, faiss.IndexIVF) else "flat")
    return SongIndex(names, factors, kind=kind, faiss_index=index)
