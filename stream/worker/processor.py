"""The hot path: what the worker does with one micro-batch of listening events, independent of Faust.

validate -> append to the event log -> ``partial_fit`` -> recommend for the touched users -> one
Redis MSET. The online maths is the same ``online_models`` code the prequential replay runs;
this adds only the edges (log, Redis, dead letters, counters).
"""

from __future__ import annotations

import time

import numpy as np

from offline.eventlog import EventLog
from online_models.batch import EventBatch
from online_models.online import OnlineALS
from stream.events import parse_events
from stream.worker.ab_arm import ABArm
from stream.worker.backfill import Backfill
from stream.worker.dedup import AppliedEvents
from stream.worker.lists import ActiveUsers, ListWriter, last_per_user
from stream.worker.messages import DeadLetter, Message
from stream.worker.partitions import Holdings
from stream.worker.stats import Counters, LatencyWindow


def partitions_of(events: EventBatch, batch: EventBatch, partitions: np.ndarray) -> np.ndarray:
    """The partitions of ``events``, a subset of ``batch`` whose events came from ``partitions``."""
    if len(events) == len(batch):
        return partitions
    where = dict(zip(batch.event_ids.tolist(), partitions.tolist(), strict=True))
    return np.fromiter((where[e] for e in events.event_ids.tolist()), np.int32, len(events))


class BatchProcessor:
    def __init__(self, model: OnlineALS, log: EventLog, worker_id: str, lists: ListWriter, ab: ABArm,
                 applied: AppliedEvents, active: ActiveUsers, counters: Counters, freshness: LatencyWindow,
                 backfill: Backfill | None = None, holdings: Holdings | None = None) -> None:
        self.model = model
        self.log = log
        self.worker_id = worker_id
        self.lists = lists
        self.ab = ab
        self.applied = applied
        self.active = active
        self.counters = counters
        self.freshness = freshness
        self.backfill = backfill
        self.holdings = holdings if holdings is not None else Holdings()

    def process(self, messages: list[Message]) -> list[DeadLetter]:
        """Handle one micro-batch; returns the dead letters the caller must produce before acking."""
        t0 = time.perf_counter()
        sources = [m.source for m in messages]
        parsed = parse_events([m.value for m in messages], [m.key for m in messages], sources)
        dead = [DeadLetter(messages[i].key, messages[i].value, reason, sources[i]) for i, reason in parsed.refused]
        batch, positions = parsed.events, np.asarray(parsed.positions, np.int64)
        marks = [t0, time.perf_counter()]  # where the batch's time goes: parse, log, learn, lists
        void = self.log.tombstones.void(batch.user_ids, batch.ts)
        if void.any():  # a forgotten user's erased past, sent again (a replay of an old file)
            keep = np.flatnonzero(~void)
            batch, positions = batch.take(keep), positions[keep]
            self.counters.events_void += int(void.sum())
        duplicates = 0
        if len(batch):
            # An event already folded in (redelivered by Kafka after a crash or a rebalance, or this
            # very batch again after a failed Redis write) is neither appended nor learnt a second
            # time; its user's list is still recomputed and written.
            new_events, duplicates = self.applied.split(batch)
            partitions = np.fromiter((messages[i].partition for i in positions.tolist()), np.int32, len(batch))
            self.log.append(new_events, writer=self.worker_id, partitions=partitions_of(new_events, batch, partitions))
            self.holdings.observe(batch.user_ids, partitions, batch.ts)
            produced = np.array([messages[i].timestamp for i in positions.tolist()], dtype=np.float64)
            marks.append(time.perf_counter())
            self.model.partial_fit(new_events)
            self.applied.folded_in(new_events)
            marks.append(time.perf_counter())
            touched = np.unique(batch.user_ids)
            self.ab.observe(new_events)  # against the lists served before these events
            written = self.lists.write(touched, last_per_user(touched, batch, produced))
            self.applied.written()
            self.freshness.add(written - produced)
            self.active.touch(touched)
            if self.backfill is not None:  # their lists are as fresh as can be, and carry their last event
                self.backfill.discard(touched.tolist())
            self.counters.users_written += len(touched)
            marks.append(time.perf_counter())
        else:  # the void check was this batch's log stage; nothing was learnt or listed
            marks += [time.perf_counter()] * 3
        self._count(len(batch), duplicates, marks)
        return dead

    def _count(self, events: int, duplicates: int, marks: list[float]) -> None:
        """``marks``: the batch's start, the ends of parsing, logging and learning, and its end (the
        last stage: lists, their Redis write and the bookkeeping)."""
        c = self.counters
        c.events += events
        c.duplicates += duplicates
        c.batches += 1
        c.last_batch_ms = (marks[-1] - marks[0]) * 1000
        c.busy_s += marks[-1] - marks[0]
        c.parse_s += marks[1] - marks[0]
        c.log_s += marks[2] - marks[1]
        c.learn_s += marks[3] - marks[2]
        c.lists_s += marks[4] - marks[3]
        if events:
            c.last_batch_at = time.time()
            c.cpu_at_last_batch = time.process_time()
            if not c.first_batch_at:
                c.first_batch_at = c.last_batch_at
                c.cpu_at_first_batch = c.cpu_at_last_batch
                c.events_at_first_batch = c.events
