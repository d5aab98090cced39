"""Hidden songs and forgotten users in one worker.

Both requests are recorded in the data directory (``offline.removals``), which every worker follows
every second; a hide can also arrive as a catalog message on the songs topic, which every worker
reads (the catalog broadcast). A hidden song is masked in the online state (no pool may serve it),
left out of every served index's searches, and the lists this worker owns that hold it are rewritten
first in line by the backfill. A forgotten user's per-user state is erased, their list deleted, and
this worker's own log segments purged of them (a batch it appended before it knew).
"""

from __future__ import annotations

import logging

import numpy as np

from index_manager.keys import song_keys
from offline.eventlog import EventLog
from offline.removals import HiddenSongs, Tombstone
from online_models.online import OnlineALS
from online_models.serving import ServingModel
from stream.events import Song
from stream.redis_store import RecsWriter
from stream.worker.backfill import Backfill
from stream.worker.lists import ActiveUsers
from stream.worker.stats import Counters

log = logging.getLogger("musicrec.worker")


class Removals:
    def __init__(self, model: OnlineALS, log: EventLog, hidden: HiddenSongs, writer: RecsWriter,
                 backfill: Backfill, active: ActiveUsers, counters: Counters) -> None:
        self.model = model
        self.log = log
        self.hidden = hidden
        self.writer = writer
        self.backfill = backfill
        self.active = active
        self.counters = counters
        self._to_delete: list[str] = []  # applied here, not yet in Redis
        self._to_sweep: list[str] = []

    # -- hidden songs -------------------------------------------------------------------------------
    def apply_to(self, model: ServingModel) -> None:
        """A version about to serve leaves the hidden songs out of its searches too."""
        model.index.hide(self.model.state.hidden.keys)

    def take_visibility(self, songs: list[Song], served: list[ServingModel]) -> None:
        """Visibility requests from the songs topic (each applied unless a later one is known)."""
        hide: list[str] = []
        show: list[str] = []
        for song in songs:
            if song.hidden is not None:
                (hide if song.hidden else show).extend(self.hidden.merge([song.song_id], song.hidden, song.ts))
        self._change(hide, show, served)
        self.flush()

    def load(self) -> None:
        """At start, before the log is read: the requests made so far (no list exists to sweep yet)."""
        hide, _ = self.hidden.refresh()
        self.model.state.hidden.add(song_keys(np.asarray(hide, dtype=object)))
        self.counters.songs_hidden = len(self.model.state.hidden)
        self.log.tombstones.take_new()  # the state is rebuilt from a log without them: nothing to erase
        self.model.state.forgotten.update(self.log.tombstones.at())

    def poll_hidden(self, served: list[ServingModel]) -> None:
        hide, show = self.hidden.refresh()
        self._change(hide, show, served)

    def _change(self, hide: list[str], show: list[str], served: list[ServingModel]) -> None:
        state = self.model.state
        if show:
            keys = song_keys(np.asarray(show, dtype=object))
            state.hidden.remove(keys)
            for m in served:
                m.index.unhide(keys)
        if not hide:
            return
        keys = song_keys(np.asarray(hide, dtype=object))
        state.hidden.add(keys)
        for m in served:
            m.index.hide(keys)
        self.counters.songs_hidden = len(state.hidden)
        self._to_sweep.extend(hide)

    def flush(self) -> None:
        """The Redis side of what was applied, kept until Redis takes it (raises ServiceUnavailable
        meanwhile): forgotten users' lists deleted; the stored lists holding a newly hidden song
        rewritten first, and the popular list now."""
        if self._to_delete:
            self.writer.delete(self._to_delete)
            self._to_delete = []
        if self._to_sweep:
            users = self.model.state.history.users()
            holding = self.writer.holding(users[self.backfill.ownership.owned(users)].tolist(), self._to_sweep)
            self.backfill.enqueue(holding, front=True)
            self.backfill.lists.write(np.empty(0, dtype=object), None)
            log.warning("hid %d songs; %d stored lists held them", len(self._to_sweep), len(holding))
            self._to_sweep = []

    # -- forgotten users ------------------------------------------------------------------------------
    def poll_forgotten(self) -> list[Tombstone]:
        """Forget the users of new tombstones in this worker now (their lists go at the next
        :meth:`flush`); returns them, so the caller can purge this worker's own segments aside."""
        new = self.log.tombstones.take_new()
        if not new:
            return []
        users = np.asarray([t.user_id for t in new], dtype=object)
        for t in new:
            self.model.state.forget(np.asarray([t.user_id], dtype=object), t.at)
        self.active.discard(users.tolist())
        self.backfill.discard(users.tolist())
        self.counters.users_forgotten += len(new)
        self._to_delete.extend(users.tolist())
        return new
