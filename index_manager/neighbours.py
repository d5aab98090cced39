"""Similar songs: the nearest songs of a song by cosine of their factor vectors, in one version's index."""

from __future__ import annotations

import numpy as np

from index_manager.keys import song_keys
from index_manager.song_index import SongIndex


def similar_songs(index: SongIndex, song_ids: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` songs closest to each of ``song_ids``: (keys int64 (S, k), cosines float64 (S, k)),
    best first, padded with -1 / -inf; a song the index does not hold gets a padded row.

    Cosine rather than the index's inner product: inner product favours songs with long vectors (the
    popular ones), so every song would get the same neighbours. The index still supplies the ``depth``
    candidates (by inner product), which keeps a query sub-linear on HNSW. Songs are searched one at
    a time: FAISS's batched scores differ in the last bits from single queries, and a song's
    neighbours must not depend on which songs share the call."""
    songs = np.asarray(song_ids, dtype=object)
    if songs.ndim != 1:
        raise ValueError(f"song_ids must be a 1-d array, got shape {songs.shape}")
    if not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    out_k = np.full((len(songs), k), -1, np.int64)
    out_s = np.full((len(songs), k), -np.inf)
    for i, row in enumerate(index.rows(song_keys(songs)).tolist()):
        if row < 0:
            continue
        query = index.factors[row:row + 1]
        keys, _ = index.search(query, min(len(index), max(depth, k + 1)))
        keys = keys[0][keys[0] >= 0]
        rows = index.rows(keys)
        rows = rows[(rows >= 0) & (rows != row)]
        vectors = index.factors[rows].astype(np.float64)
        q = query[0].astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(q)
        cosine = np.divide(vectors @ q, norms, out=np.zeros(len(rows)), where=norms > 0)
        order = np.argsort(-cosine, kind="stable")[:k]
        out_k[i, :len(order)] = index.keys[rows[order]]
        out_s[i, :len(order)] = cosine[order]
    return out_k, out_s
