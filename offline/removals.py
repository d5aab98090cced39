"""What must not be served or kept: hidden songs and forgotten users, each an append-only JSON-lines
file in the data directory, read by every worker, the API and the offline jobs.

* ``<catalog dir>/hidden.jsonl``: ``{"song_id", "hidden", "at"}``; the record with the latest ``at``
  of a song decides (``hidden: false`` unhides it). ``at`` is the time the request was made (the
  catalog message's ``ts``), so the same request recorded twice (by the command that made it and by
  the worker that read it from the songs topic) is one request.
* ``<log dir>/tombstones.jsonl``: ``{"user_id", "at"}``; every event of the user with ``ts <= at``
  is void: purged from the log, skipped when read, refused when appended or consumed again (a
  replay of an old event file cannot bring the user back), while later events start a new history.

Appends take an exclusive ``flock`` and write whole lines, so several processes may append at once;
readers follow the file incrementally (it only grows).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN_FILE = "hidden.jsonl"
TOMBSTONES_FILE = "tombstones.jsonl"


class JsonLines:
    """An append-only file of JSON objects, one a line, followed from where it was last read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: int | None = None

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one writer's lines are never interleaved with another's
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the previous call (all of them on the first); a partial last
        line (an append in progress) is left for the next call."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if st.st_ino != self._inode or st.st_size < self._offset:  # replaced: read it again
            self._inode, self._offset = st.st_ino, 0
        if st.st_size == self._offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read(st.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        self._offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


class HiddenSongs:
    """Which songs are hidden: the latest request per song wins."""

    def __init__(self, catalog_dir: str | Path) -> None:
        self.file = JsonLines(Path(catalog_dir) / HIDDEN_FILE)
        self._latest: dict[str, tuple[bool, float]] = {}

    def record(self, song_ids: list[str], hidden: bool, at: float) -> None:
        self.record_requests([(s, hidden, at) for s in song_ids])

    def record_requests(self, requests: list[tuple[str, bool, float]]) -> None:
        """(song, hidden, at) requests, appended at once."""
        self.file.append([{"song_id": s, "hidden": bool(h), "at": float(at)} for s, h, at in requests])

    def merge(self, song_ids: list[str], hidden: bool, at: float) -> list[str]:
        """Take requests in (from the file or the songs topic); returns the songs whose state changed."""
        changed = []
        for song in song_ids:
            was = self._latest.get(song)
            if was is not None and was[1] > at:
                continue  # an older request, read again (the topic is re-read from the start)
            self._latest[song] = (hidden, at)
            if (was is not None and was[0]) != hidden:
                changed.append(song)
        return changed

    def refresh(self) -> tuple[list[str], list[str]]:
        """Read new records; returns (songs now hidden, songs now visible) whose state changed."""
        before: dict[str, bool] = {}
        for r in self.file.read_new():
            song = r["song_id"]
            before.setdefault(song, self.is_hidden(song))
            self.merge([song], bool(r["hidden"]), float(r["at"]))
        changed = [s for s, was in before.items() if self.is_hidden(s) != was]
        return [s for s in changed if self.is_hidden(s)], [s for s in changed if not self.is_hidden(s)]

    def hidden(self) -> list[str]:
        return sorted(s for s, (h, _) in self._latest.items() if h)

    def is_hidden(self, song_id: str) -> bool:
        state = self._latest.get(song_id)
        return state is not None and state[0]


@dataclass(frozen=True)
class Tombstone:
    user_id: str
    at: float


class Tombstones:
    """Forgotten users: each user's latest forget time; events at or before it are void."""

    def __init__(self, log_dir: str | Path) -> None:
        self.file = JsonLines(Path(log_dir) / TOMBSTONES_FILE)
        self._at: dict[str, float] = {}
        self._unseen: list[Tombstone] = []

    def __len__(self) -> int:
        self.refresh()
        return len(self._at)

    def record(self, user_ids: list[str], at: float) -> None:
        self.file.append([{"user_id": u, "at": float(at)} for u in user_ids])
        self.refresh()

    def refresh(self) -> None:
        """Read what other processes recorded since the last read."""
        new = [Tombstone(str(r["user_id"]), float(r["at"])) for r in self.file.read_new()]
        for t in new:
            self._at[t.user_id] = max(self._at.get(t.user_id, -np.inf), t.at)
        self._unseen += new

    def take_new(self) -> list[Tombstone]:
        """Tombstones read since the previous call (a user forgotten again appears again), whichever
        call read them: the one who acts on a forget is not the one who happened to read it first."""
        self.refresh()
        new, self._unseen = self._unseen, []
        return new

    def at(self) -> dict[str, float]:
        """user -> latest forget time (a copy, after reading what is new)."""
        self.refresh()
        return dict(self._at)

    def void(self, user_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Which events (``user_ids[i]`` at ``ts[i]``) belong to a forgotten user's erased history."""
        self.refresh()
        if not self._at or not len(user_ids):
            return np.zeros(len(user_ids), bool)
        get = self._at.get
        cut = np.fromiter((get(u, -np.inf) for u in user_ids), np.float64, count=len(user_ids))
        return np.asarray(ts, np.float64) <= cut
