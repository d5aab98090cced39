"""Following a version pointer into a :class:`ModelHolder`: the one policy every reader applies.

The worker (its published model and its A/B arm) and the read API (its similar-songs index) each
own a :class:`VersionFollower`. A version is loaded and checked aside (``prepare``, safe in another
thread), then swapped in by reference (``install``). Versions only move forward.

A version that fails to load is *refused*: logged and counted once, the previous version keeps
serving, and it is not tried again while the pointer still names it. Artifacts never change once
written, so the same bytes would fail the same way; a fixed model is published as a new version.
When the pointer names another version the refusal is forgotten, so re-publishing a version (after
a disk was repaired, say) tries it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from index_manager.artifacts import ArtifactError
from index_manager.holder import ModelHolder
from index_manager.song_index import IndexFailure

log = logging.getLogger("musicrec.versions")

M = TypeVar("M")

# what a broken version raises while loading: its files, its arrays, its FAISS index
LOAD_ERRORS: tuple[type[Exception], ...] = (ArtifactError, IndexFailure, OSError, ValueError)


class VersionFollower(Generic[M]):
    def __init__(self, load: Callable[[str], M], holder: ModelHolder[M] | None = None, what: str = "model") -> None:
        self.load = load
        self.holder: ModelHolder[M] = holder if holder is not None else ModelHolder()
        self.what = what
        self.swaps = 0
        self.refused = 0
        self.refused_version: str | None = None
        self.last_error: str | None = None

    def wanted(self, version: str | None) -> bool:
        """Whether ``version`` should be loaded: newer than what serves and not refused."""
        if version is None:
            return False
        if version != self.refused_version:
            self.refused_version = None  # the pointer moved: a refusal is only kept while it is named
        current = self.holder.version
        return version != self.refused_version and (current is None or version > current)

    def prepare(self, version: str | None) -> M | None:
        """Load and check ``version`` aside; None when it is not wanted or is refused."""
        if version is None or not self.wanted(version):
            return None
        try:
            return self.load(version)
        except LOAD_ERRORS as exc:
            self.refused += 1
            self.refused_version, self.last_error = version, str(exc)
            log.error("refusing %s version %s, still serving %s: %s", self.what, version, self.holder.version, exc)
            return None

    def install(self, model: M, version: str) -> bool:
        """Swap a prepared version in; False if another one got there first."""
        current = self.holder.version
        if not self.holder.swap(model, version):
            return False
        self.swaps += 1
        log.warning("%s now serves version %s (was %s)", self.what, version, current)
        return True

    def follow(self, version: str | None) -> bool:
        """Prepare and install in one step; returns whether ``version`` now serves."""
        model = self.prepare(version)
        return model is not None and version is not None and self.install(model, version)
