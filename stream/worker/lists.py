"""Writing users' lists: recommend with reasons, split by A/B arm, one Redis MSET per arm.

Also the users recently active, whose lists the backfill rewrites first after a model swap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from online_models.abtest import CONTROL, TREATMENT, in_treatment
from online_models.base import RecList
from online_models.batch import EventBatch
from online_models.online import OnlineALS
from stream.redis_store import RecsWriter
from stream.worker.ab_arm import ABArm

ACTIVE_USERS = 50_000  # users whose lists are rewritten first after a model swap
SERVE_CHUNK = 512  # users per request (measured: per-user cost flat from 128 to 2,000, peak memory not)


def last_per_user(users: np.ndarray, batch: EventBatch, produced_at: np.ndarray) -> list[dict[str, Any] | None]:
    """The latest event of each of ``users`` within ``batch`` (for the Redis value's freshness)."""
    order = np.lexsort((batch.ts, batch.user_ids))  # by user, then time; last of each run wins
    u_sorted = batch.user_ids[order]
    last_idx = order[np.r_[u_sorted[1:] != u_sorted[:-1], True]]
    by_user = dict(zip(batch.user_ids[last_idx].tolist(), last_idx.tolist(), strict=True))
    out: list[dict[str, Any] | None] = []
    for u in users:
        i = by_user.get(u)
        out.append(None if i is None else {"event_id": batch.event_ids[i], "ts": float(batch.ts[i]),
                                           "produced_at": float(produced_at[i])})
    return out


class ListWriter:
    def __init__(self, model: OnlineALS, ab: ABArm, writer: RecsWriter, k: int) -> None:
        self.model = model
        self.ab = ab
        self.writer = writer
        self.k = k

    def write(self, users: np.ndarray, last_events: list[dict[str, Any] | None] | None) -> float:
        """Recommend for ``users`` and store their lists and the popular list; returns the time of
        the last write. A worker behind the stream takes big batches: their users are served
        SERVE_CHUNK at a time, so a request's arrays (and the heap they leave behind) stay small."""
        written = 0.0
        for start in range(0, len(users), SERVE_CHUNK):
            part = slice(start, start + SERVE_CHUNK)
            written = self._write(users[part], None if last_events is None else last_events[part])
        return written

    def _write(self, users: np.ndarray, last_events: list[dict[str, Any] | None] | None) -> float:
        run = self.ab.run
        if run is None:
            lists = self.model.serve(users, self.k)
            return self.writer.write(users, lists.recs, last_events, lists.popular)
        treated = in_treatment(users, run.test.salt, run.test.share)
        control = self.model.serve(users[~treated], self.k)
        written = time.time()
        popular: RecList | None = control.popular  # the published version's, whoever is in the batch
        for arm, sel in ((CONTROL, ~treated), (TREATMENT, treated)):
            idx = np.flatnonzero(sel)
            if not len(idx):
                continue
            part = users[idx]
            recs = control.recs if arm == CONTROL else run.model.serve(part, self.k).recs
            written = self.writer.write(part, recs, None if last_events is None else [last_events[i] for i in idx],
                                        popular, arm=arm)
            popular = None
            run.metrics.record(part, arm, recs.song_ids)
        return written


class ActiveUsers:
    """The users with the most recent events (least recently active forgotten first)."""

    def __init__(self, size: int = ACTIVE_USERS) -> None:
        self.size = size
        self._users: OrderedDict[str, None] = OrderedDict()

    def touch(self, users: Iterable[str]) -> None:
        for user in users:
            self._users[user] = None
            self._users.move_to_end(user)
            if len(self._users) > self.size:
                self._users.popitem(last=False)

    def discard(self, users: Iterable[str]) -> None:
        for user in users:
            self._users.pop(user, None)

    def newest_first(self) -> list[str]:
        return list(reversed(self._users))
