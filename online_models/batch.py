"""Column-oriented batches of listening events: the one shape every hot path passes around."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from index_manager.keys import song_keys

PLAY: int = 1
SKIP: int = -1
KIND_OF = {"play": PLAY, "skip": SKIP}


def _as_str_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class EventBatch:
    """A batch of listening events as parallel numpy columns.

    ``kinds`` holds ``PLAY`` (1) or ``SKIP`` (-1); ``ms_played`` is NaN where unknown; ``event_ids``
    is an object array with ``None`` where the producer gave none.
    """

    user_ids: np.ndarray
    song_ids: np.ndarray
    kinds: np.ndarray
    ts: np.ndarray
    ms_played: np.ndarray
    event_ids: np.ndarray = None  # type: ignore[assignment]  # None -> all missing, set in __post_init__

    def __post_init__(self) -> None:
        users = _as_str_array(self.user_ids, "user_ids")
        songs = _as_str_array(self.song_ids, "song_ids")
        n = len(users)
        kinds = np.asarray(self.kinds)
        ts = np.asarray(self.ts, dtype=np.float64)
        ms = np.asarray(self.ms_played, dtype=np.float64)
        ids = (
            np.full(n, None, dtype=object)
            if self.event_ids is None
            else _as_str_array(self.event_ids, "event_ids")
        )
        for name, col in (("song_ids", songs), ("kinds", kinds), ("ts", ts), ("ms_played", ms),
                          ("event_ids", ids)):
            if col.shape != (n,):
                raise ValueError(f"{name} has shape {col.shape}, expected ({n},) like user_ids")
        if kinds.dtype.kind not in "iu":
            raise ValueError(f"kinds must be integers (PLAY=1, SKIP=-1), got dtype {kinds.dtype}")
        if n and not np.isin(kinds, (PLAY, SKIP)).all():
            raise ValueError("kinds may only hold PLAY (1) or SKIP (-1)")
        if n and not np.isfinite(ts).all():
            raise ValueError("ts must be finite unix seconds")
        object.__setattr__(self, "user_ids", users)
        object.__setattr__(self, "song_ids", songs)
        object.__setattr__(self, "kinds", kinds.astype(np.int8, copy=False))
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "ms_played", ms)
        object.__setattr__(self, "event_ids", ids)

    def __len__(self) -> int:
        return len(self.user_ids)

    @cached_property
    def song_keys(self) -> np.ndarray:
        """Stable int64 keys of ``song_ids`` (the ids FAISS and the online state use)."""
        return song_keys(self.song_ids)

    @classmethod
    def empty(cls) -> EventBatch:
        return cls(np.empty(0, object), np.empty(0, object), np.empty(0, np.int8),
                   np.empty(0), np.empty(0))

    @classmethod
    def from_columns(cls, user_ids: object, song_ids: object, events: object = None, ts: object = None,
                     ms_played: object = None, event_ids: object = None) -> EventBatch:
        """Build from plain columns; ``events`` holds "play"/"skip" strings (default: all plays)."""
        users = _as_str_array(user_ids, "user_ids")
        n = len(users)
        if events is None:
            kinds = np.full(n, PLAY, np.int8)
        else:
            names = _as_str_array(events, "events")
            kinds = np.where(names == "skip", SKIP, PLAY).astype(np.int8)
            unknown = ~np.isin(names, list(KIND_OF))
            if unknown.any():
                raise ValueError(f"unknown event type {names[unknown][0]!r}: expected 'play' or 'skip'")
        ts_arr = np.zeros(n) if ts is None else np.asarray(ts, dtype=np.float64)
        if ms_played is None:
            ms = np.full(n, np.nan)
        else:
            raw = np.asarray(ms_played)
            ms = np.array([np.nan if v is None else v for v in raw], dtype=np.float64) \
                if raw.dtype == object else raw.astype(np.float64)
        return cls(users, song_ids, kinds, ts_arr, ms,  # type: ignore[arg-type]
                   None if event_ids is None else event_ids)  # type: ignore[arg-type]

    def take(self, index: np.ndarray | slice) -> EventBatch:
        return EventBatch(self.user_ids[index], self.song_ids[index], self.kinds[index], self.ts[index],
                          self.ms_played[index], self.event_ids[index])

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        if not batches:
            return EventBatch.empty()
        return EventBatch(*(np.concatenate([getattr(b, f) for b in batches])
                            for f in ("user_ids", "song_ids", "kinds", "ts", "ms_played", "event_ids")))

    def sorted_by_time(self) -> EventBatch:
        return self.take(np.argsort(self.ts, kind="stable"))

    def event_names(self) -> np.ndarray:
        return np.where(self.kinds == SKIP, "skip", "play").astype(object)
