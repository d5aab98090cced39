"""Learning each event once, although Kafka delivers some twice.

Kafka redelivers what was not committed: after a crash or a rebalance (the events a successor
rebuilt from the log), or the same batch again after a failed Redis write. Folding such an event in
again would count it twice in the user's engagement, so the worker remembers the ids of the events
most recently folded in. Faust commits every ~3 s, so a bounded window covers every redelivery.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from online_models.batch import EventBatch

APPLIED_IDS = 50_000  # event ids remembered as folded in


class AppliedEvents:
    def __init__(self, limit: int = APPLIED_IDS) -> None:
        self.limit = limit
        self._applied: dict[str, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._unwritten: set[str] = set()  # folded in by a batch whose Redis write has not succeeded yet

    def remember(self, ids: Iterable[str]) -> None:
        applied = self._applied
        for event_id in ids:
            applied[event_id] = None
        excess = len(applied) - self.limit
        if excess > 0:
            for old in list(itertools.islice(applied, excess)):
                del applied[old]

    def split(self, batch: EventBatch) -> tuple[EventBatch, int]:
        """(the events of ``batch`` not folded in yet, how many of the rest are redeliveries).

        A repeat within the batch is not new either; a batch retried after its Redis write failed is
        not counted as duplicates, since those events were never served."""
        applied = self._applied
        seen: set[str] = set()
        new = np.ones(len(batch), dtype=bool)
        for i, event_id in enumerate(batch.event_ids.tolist()):
            if event_id in applied or event_id in seen:
                new[i] = False
            seen.add(event_id)
        duplicates = sum(1 for i in np.flatnonzero(~new) if batch.event_ids[i] not in self._unwritten)
        return (batch if new.all() else batch.take(new)), duplicates

    def folded_in(self, events: EventBatch) -> None:
        self.remember(events.event_ids)
        self._unwritten.update(events.event_ids.tolist())

    def written(self) -> None:
        """The lists of the events folded in so far are in Redis."""
        self._unwritten.clear()
