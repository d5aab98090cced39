"""The one registry of model versions: the artifacts on disk, the pointer readers follow, the history.

A version is written once under ``<root>/<version>/`` (``index_manager.artifacts``). *Publishing*
points every reader at it; refusals (a gate that said no) and publications are both recorded in a
bounded history, newest first. Where the pointer and the history live is the caller's choice: any
:class:`PointerStore` (Redis in production, ``stream.redis_store.RedisPointer``; memory in tests),
so this package never imports a client library.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from index_manager.artifacts import ArtifactError, ModelArtifact, list_versions, load_artifact, read_manifest

log = logging.getLogger("musicrec.versions")

HISTORY_MAX = 100  # records kept, newest first


class PointerStore(Protocol):
    """Where the published version and the history are kept."""

    def read(self) -> str | None:
        """The published version, None before the first publication."""

    def publish(self, version: str, record: str, keep: int) -> None:
        """Point at ``version`` and push ``record`` onto the history (one atomic step)."""

    def record(self, record: str, keep: int) -> None:
        """Push ``record`` onto the history only."""

    def history(self, n: int) -> list[str]:
        """The ``n`` newest history records."""


class MemoryPointer:
    """A :class:`PointerStore` in this process (tests, offline tools)."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.records: list[str] = []

    def read(self) -> str | None:
        return self.version

    def publish(self, version: str, record: str, keep: int) -> None:
        self.version = version
        self.record(record, keep)

    def record(self, record: str, keep: int) -> None:
        self.records = [record, *self.records][:keep]

    def history(self, n: int) -> list[str]:
        return self.records[:n]


class VersionRegistry:
    """Publish, read the pointer, record refusals, load versions: every reader goes through here."""

    def __init__(self, root: str | Path, pointer: PointerStore) -> None:
        self.root = Path(root)
        self.pointer = pointer

    def published(self) -> str | None:
        return self.pointer.read()

    def publish(self, version: str, metrics: dict[str, Any] | None = None) -> None:
        if not isinstance(version, str) or not version.strip():
            raise ValueError(f"a version name is a non-empty string, got {version!r}")
        record = {"version": version, "published_at": time.time(), "metrics": metrics or {}}
        self.pointer.publish(version, json.dumps(record), HISTORY_MAX)

    def refuse(self, version: str, gate: dict[str, Any]) -> None:
        """Record that ``version`` was not published (the pointer stays where it is)."""
        self.pointer.record(json.dumps({"version": version, "refused_at": time.time(), "gate": gate}), HISTORY_MAX)

    def history(self, n: int = HISTORY_MAX) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.pointer.history(n)]

    def load(self, version: str) -> ModelArtifact:
        return load_artifact(self.root, version)

    def manifest(self, version: str) -> dict[str, Any]:
        return read_manifest(self.root, version)

    def published_artifact(self) -> ModelArtifact | None:
        """The published version's artifact; None when nothing is published or it cannot be loaded
        (logged: what serves is then compared with nothing, and its own problem is not hidden)."""
        version = self.published()
        if version is None:
            return None
        try:
            return self.load(version)
        except ArtifactError as exc:
            log.error("published version %s cannot be loaded: %s", version, exc)
            return None

    def versions(self) -> list[str]:
        """Every complete version on disk, oldest first."""
        return list_versions(self.root)

    def previous(self) -> str | None:
        """The version published before the current one (what a rollback would go back to)."""
        current = self.published()
        for record in self.history():
            version = record.get("version")
            if "published_at" in record and version != current:
                return str(version)
        return None

    def prune(self, keep: int, protect: Iterable[str] = (), dry_run: bool = False) -> list[str]:
        """Delete all but the ``keep`` newest versions, never the published one, the previous one or
        any of ``protect`` (an A/B arm, what workers still serve); returns the versions deleted.

        A version is first renamed to a temporary name (which ``list_versions`` skips) and then
        removed, so a reader never finds half of one."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        versions = self.versions()
        kept = set(versions[-keep:]) | set(protect) | {v for v in (self.published(), self.previous()) if v}
        doomed = [v for v in versions if v not in kept]
        if not dry_run:
            for version in doomed:
                aside = self.root / f".tmp-prune-{version}-{uuid.uuid4().hex[:8]}"
                os.rename(self.root / version, aside)
                shutil.rmtree(aside)
                log.info("pruned model version %s", version)
        return doomed
