"""The song catalog: append-only Parquet segments (newest row per song wins), read with DuckDB.

The worker appends every valid catalog event; ``musicrec import catalog`` appends a catalog file.
Retrain jobs read it to fit the content projection for new songs.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline.eventfile import BadInputFile

SCHEMA = pa.schema([("song_id", pa.string()), ("title", pa.string()), ("artist", pa.string()),
                    ("genre", pa.string()), ("features", pa.string()), ("ts", pa.float64()),
                    ("ingested_at", pa.float64())])


@dataclass
class CatalogRows:
    song_ids: list[str]
    titles: list[str]
    artists: list[str]
    genres: list[str | None]
    features: list[dict[str, float]]
    ts: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.song_ids)


class CatalogStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def segments(self) -> list[Path]:
        return sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []

    def append(self, rows: CatalogRows) -> Path | None:
        if not len(rows):
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        table = pa.table({
            "song_id": rows.song_ids, "title": rows.titles, "artist": rows.artists, "genre": rows.genres,
            "features": [json.dumps(f, allow_nan=False) for f in rows.features],
            "ts": rows.ts or [now] * len(rows), "ingested_at": [now] * len(rows)}, schema=SCHEMA)
        name = f"cat-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.root / name)
        return self.root / name

    def read(self) -> CatalogRows:
        """The latest row of every song."""
        segs = self.segments()
        if not segs:
            return CatalogRows([], [], [], [], [])
        files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in segs)
        with closing(duckdb.connect()) as con:
            t = con.sql(f"""
                SELECT song_id, arg_max(title, ingested_at) AS title, arg_max(artist, ingested_at) AS artist,
                       arg_max(genre, ingested_at) AS genre, arg_max(features, ingested_at) AS features,
                       arg_max(ts, ingested_at) AS ts
                FROM read_parquet([{files}]) GROUP BY song_id ORDER BY song_id""").to_arrow_table()
        return CatalogRows(t.column("song_id").to_pylist(), t.column("title").to_pylist(),
                           t.column("artist").to_pylist(), t.column("genre").to_pylist(),
                           [json.loads(f) if f else {} for f in t.column("features").to_pylist()],
                           t.column("ts").to_pylist())

    def import_file(self, path: str | Path) -> int:
        """Append a catalog file (Parquet: song_id, title, artist, genre, ts, feat_* columns)."""
        rows = read_catalog_file(path)
        self.append(rows)
        return len(rows)


def read_catalog_file(path: str | Path) -> CatalogRows:
    p = Path(path)
    if not p.is_file():
        raise BadInputFile(f"{p}: no such file")
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInputFile(f"{p}: not a Parquet catalog ({exc})") from exc
    cols = table.column_names
    if "song_id" not in cols:
        raise BadInputFile(f"{p}: catalog has no song_id column")
    n = table.num_rows

    def text(name: str) -> list[str]:
        return [v or "" for v in table.column(name).to_pylist()] if name in cols else [""] * n

    feat_cols = [c for c in cols if c.startswith("feat_")]
    values = {c[5:]: np.asarray(table.column(c).to_numpy(zero_copy_only=False), np.float64) for c in feat_cols}
    features = [{name: float(v[i]) for name, v in values.items() if np.isfinite(v[i])} for i in range(n)]
    genres: Sequence[str | None] = table.column("genre").to_pylist() if "genre" in cols else [None] * n
    ts = [float(v or 0.0) for v in table.column("ts").to_pylist()] if "ts" in cols else [0.0] * n
    return CatalogRows([str(s) for s in table.column("song_id").to_pylist()], text("title"), text("artist"),
                       list(genres), features, ts)
