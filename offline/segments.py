"""Prequential recall by how much each user had done before the moment they were served.

A replayed log mixes newcomers, whom every model can only serve a popular list, with users of long
histories, where a model's signals show. One overall figure hides which of them a model wins on, so
each scored play is put in a segment by its user's events (plays and skips) before the play's
micro-batch: in the training part and in earlier batches, i.e. everything any model could have learnt
when the list was served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from online_models.batch import PLAY, EventBatch

# lower bounds of the segments, in events before the batch: none, 1-9, 10-99, 100 or more
HISTORY_BOUNDS = (0, 1, 10, 100)


def segment_labels(bounds: Sequence[int] = HISTORY_BOUNDS) -> list[str]:
    """``(0, 1, 10, 100)`` -> ``["0", "1-9", "10-99", "100+"]``."""
    labels = []
    for low, high in zip(bounds, (*bounds[1:], None), strict=True):
        if high is None:
            labels.append(f"{low}+")
        elif high == low + 1:
            labels.append(str(low))
        else:
            labels.append(f"{low}-{high - 1}")
    return labels


def history_before_batch(train: EventBatch, test: EventBatch, batch_size: int) -> np.ndarray:
    """For each play of ``test`` (in order), its user's events in ``train`` and in the batches of
    ``test`` before the play's own (batches of ``batch_size`` from the start of ``test``)."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    users = np.concatenate([np.asarray(train.user_ids, dtype=object), np.asarray(test.user_ids, dtype=object)])
    n = len(users)
    _, code = np.unique(users, return_inverse=True)
    code = code.astype(np.int64)
    # one sorted key per event: its user, then its position; a user's events before position p are
    # those between the user's first key and (user, p)
    keys = np.sort(code * (n + 1) + np.arange(n))
    plays = np.flatnonzero(np.asarray(test.kinds) == PLAY)
    start = len(train) + (plays // batch_size) * batch_size
    user = code[len(train) + plays]
    return np.searchsorted(keys, user * (n + 1) + start) - np.searchsorted(keys, user * (n + 1))


def segment_recall(history: np.ndarray, hits: Mapping[str, np.ndarray], k: int,
                   bounds: Sequence[int] = HISTORY_BOUNDS) -> dict[str, Any]:
    """Plays per segment and each model's recall@k in it (None where a segment has no plays);
    ``hits[name]`` is aligned with ``history`` (one entry per scored play)."""
    history = np.asarray(history)
    which = np.searchsorted(np.asarray(bounds), history, side="right") - 1
    counts = np.bincount(which, minlength=len(bounds))
    recall: dict[str, list[float | None]] = {}
    for name, h in hits.items():
        if len(h) != len(history):
            raise ValueError(f"{name}: {len(h)} hits for {len(history)} scored plays")
        sums = np.bincount(which, weights=np.asarray(h, np.float64), minlength=len(bounds))
        recall[name] = [round(float(s / c), 4) if c else None for s, c in zip(sums, counts, strict=True)]
    return {"history_events": segment_labels(bounds), "plays": counts.tolist(), f"recall@{k}": recall}


def print_segments(segments: dict[str, Any], shown: Sequence[str], k: int, console: Console) -> None:
    """The segments as a table: one column per segment, a row of plays (share of all), one row of
    recall@k per ``shown`` model (models as rows: it stays within 80 columns however many are shown),
    and, for two-stage models, the share of the plays their candidates held (``"pool_recall"``)."""
    metric = f"recall@{k}"
    total = max(sum(segments["plays"]), 1)
    table = Table(title=f"{metric} by the user's events before the batch")
    table.add_column("events before", justify="left")
    for label in segments["history_events"]:
        table.add_column(label, justify="right")
    table.add_row("plays", *(f"{n} ({100 * n / total:.0f}%)" for n in segments["plays"]), end_section=True)
    for name in shown:
        table.add_row(name, *("-" if c is None else f"{c:.4f}" for c in segments[metric][name]))
    for name, shares in segments.get("pool_recall", {}).items():  # how many of the plays the candidates held
        table.add_row(f"{name} in pool", *("-" if c is None else f"{c:.4f}" for c in shares),
                      style="dim")
    console.print(table)
