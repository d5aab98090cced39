"""`musicrec status --json`: the shape promised in the README, from workers' published stats."""

from __future__ import annotations

from stream.worker.stats import status_json


def test_status_json_lists_each_workers_partitions_users_and_memory() -> None:
    workers = [{"worker": "box-1", "partitions": [0, 2], "users": 10, "events": 100, "refused": 1, "rss_mb": 210.5,
                "records_refetched": 4, "updated_at": 98.0, "last_batch_ms": 3.0},
               {"worker": "box-2", "users": 5, "events": 7, "refused": 0, "updated_at": 101.0}]  # an older worker
    out = status_json("v1", workers, now=100.0)
    assert out == {"version": "v1", "workers": [
        {"id": "box-1", "partitions": [0, 2], "users": 10, "events": 100, "refused": 1, "records_refetched": 4,
         "rss_mb": 210.5, "age_s": 2.0},
        {"id": "box-2", "partitions": [], "users": 5, "events": 7, "refused": 0, "records_refetched": 0,
         "rss_mb": 0.0, "age_s": 0.0}]}
    assert status_json(None, [], 0.0) == {"version": None, "workers": []}
