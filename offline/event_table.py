"""The event log's Arrow schema, and conversion between an ``EventBatch`` and an Arrow table."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from online_models.batch import EventBatch

# ``kafka_partition``: the events-topic partition an event was consumed from, null for history imported
# without Kafka (and in segments written before the column existed); a worker restores its
# partitions' users by it
SCHEMA = pa.schema([
    ("user_id", pa.string()), ("song_id", pa.string()), ("event", pa.string()), ("ts", pa.float64()),
    ("ms_played", pa.int64()), ("event_id", pa.string()), ("ingested_at", pa.float64()),
    ("kafka_partition", pa.int32()),
])


def batch_to_arrow(batch: EventBatch, ingested_at: float | None = None,
                   partitions: np.ndarray | None = None) -> pa.Table:
    ms = batch.ms_played
    if partitions is not None and len(partitions) != len(batch):
        raise ValueError(f"{len(partitions)} partitions for {len(batch)} events")
    return pa.table({
        "user_id": pa.array(batch.user_ids.tolist(), pa.string()),
        "song_id": pa.array(batch.song_ids.tolist(), pa.string()),
        "event": pa.array(batch.event_names().tolist(), pa.string()),
        "ts": pa.array(batch.ts, pa.float64()),
        "ms_played": pa.array(np.nan_to_num(ms).astype(np.int64), pa.int64(), mask=np.isnan(ms)),
        "event_id": pa.array(batch.event_ids.tolist(), pa.string()),
        "ingested_at": pa.array(np.full(len(batch), time.time() if ingested_at is None else ingested_at)),
        "kafka_partition": pa.nulls(len(batch), pa.int32()) if partitions is None
        else pa.array(np.asarray(partitions, dtype=np.int32), pa.int32()),
    }, schema=SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`SCHEMA`: columns a segment written by an older version lacks become nulls."""
    if table.schema.equals(SCHEMA, check_metadata=False):
        return table  # the usual case; a first cast would also set up Arrow's kernels (~6 MiB, kept)
    for field in SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def arrow_to_batch(table: pa.Table) -> EventBatch:
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    ms = table.column("ms_played").to_numpy(zero_copy_only=False).astype(np.float64) \
        if "ms_played" in cols else None
    return EventBatch.from_columns(cols["user_id"], cols["song_id"], cols.get("event"), cols["ts"], ms,
                                   cols.get("event_id"))
