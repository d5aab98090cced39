"""Everything learnt online, independent of the model version being served.

The state is shared by every model version a worker swaps in and by both arms of an A/B test: a
swap replaces only the item side (``online_models.serving``), and users are simply re-scored
against it. Per-user and per-song online signals live here and are all updated in :meth:`learn`,
one batch at a time; scoring (``online_models.scoring``) reads them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from index_manager.song_index import SongIndex
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.cooc import CoOccurrence
from online_models.features import new_ranker
from online_models.history import HistoryStore
from online_models.popularity import PopularityLadder
from online_models.sequences import RecentPlays

# events whose co-occurrence votes are built at once: bounds the pairs in memory during a restore
_COOC_CHUNK = 20_000


class VectorCache:
    """Users' folded-in vectors, each tagged with the model version and the history generation it
    was solved for, least recently used evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[str, int, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()  # parts of one request put from several threads

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user: str) -> tuple[str, int, np.ndarray] | None:
        return self._entries.get(user)

    def put(self, user: str, version: str, stamp: int, vector: np.ndarray) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[user] = (version, stamp, vector)
            self._entries.move_to_end(user)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def discard(self, users: np.ndarray) -> None:
        with self._lock:
            for user in users:
                self._entries.pop(user, None)


class HiddenKeys:
    """Song keys no list may contain (a takedown, an expired licence), sorted."""

    def __init__(self) -> None:
        self.keys = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: np.ndarray) -> None:
        self.keys = np.union1d(self.keys, np.asarray(keys, np.int64))

    def remove(self, keys: np.ndarray) -> None:
        self.keys = np.setdiff1d(self.keys, np.asarray(keys, np.int64))

    def mask(self, keys: np.ndarray) -> np.ndarray:
        """True where a key (any shape) is hidden."""
        keys = np.asarray(keys, np.int64)
        if not len(self.keys):
            return np.zeros(keys.shape, bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys


class OnlineState:
    """Everything learnt from the stream. Per user: decayed engagement history, the latest plays in
    order and the cached folded-in vector. Per song: popularity at several half-lives and the name
    behind its key. Between songs: co-occurrence votes. And the ranker that weighs these signals."""

    def __init__(self, config: OnlineConfig) -> None:
        self.config = config
        self.history = HistoryStore(config.half_life_days, config.max_history, config.full_play_ms,
                                    config.skip_weight)
        self.popularity = PopularityLadder(config.half_lives)
        self.recent = RecentPlays(config.recent_plays)
        self.cooc = CoOccurrence(config.cooc_half_life_events, config.cooc_neighbours)
        self.ranker = new_ranker(config)
        self.names: dict[int, str] = {}
        self.vectors = VectorCache(config.vector_cache)
        self.hidden = HiddenKeys()
        # forgotten user -> when: a version trained before that still holds their old row
        self.forgotten: dict[str, float] = {}

    def __len__(self) -> int:
        """Users with a history."""
        return len(self.history)

    def learn(self, events: EventBatch) -> np.ndarray:
        """Fold a batch into every signal; returns the distinct users touched."""
        if len(events) == 0:
            return np.empty(0, dtype=object)
        keys, first = np.unique(events.song_keys, return_index=True)
        names = self.names
        for key, i in zip(keys.tolist(), first.tolist(), strict=True):
            if key not in names:
                names[key] = events.song_ids[i]
        self.popularity.update(events)
        for start in range(0, len(events), _COOC_CHUNK):
            part = events.take(slice(start, start + _COOC_CHUNK))
            self.cooc.learn_events(self.recent, part, self.config.skip_weight)
        return self.history.update(events)

    def top_popular(self, n: int) -> np.ndarray:
        """Keys of the ``n`` most popular visible songs at the rung that predicts best."""
        ladder = self.popularity
        top = ladder.top(n + len(self.hidden), ladder.best)
        return top[~self.hidden.mask(top)][:n]

    def forget(self, users: np.ndarray, at: float) -> int:
        """Erase users' per-user state (history, recent plays, cached vectors); their past votes in
        the song-side aggregates (popularity, co-occurrence) stay. Returns how many were known."""
        users = np.asarray(users, dtype=object)
        dropped = self.history.drop_users(users)
        self.recent.forget(users)
        self.vectors.discard(users)
        for user in users.tolist():
            self.forgotten[user] = max(self.forgotten.get(user, at), at)
        return dropped

    def drop(self, users: np.ndarray) -> None:
        """Forget everything learnt per user about ``users`` (a worker no longer holding their
        partition, or users inactive too long). What they taught the shared signals (song
        popularity, co-occurrence, the ranker) stays: it is about songs, not about them."""
        self.history.drop_users(users)
        self.recent.forget(users)
        self.vectors.discard(users)

    def names_of(self, keys: np.ndarray, index: SongIndex | None) -> np.ndarray:
        """Song names of keys: the served index's, then those learnt from events (songs newer than
        the model); "" for -1."""
        names = index.names_of(keys) if index is not None else np.full(keys.shape, "", dtype=object)
        missing = (names == "") & (keys >= 0)
        if missing.any():
            names[missing] = [self.names.get(int(x), "") for x in keys[missing]]
        return names
