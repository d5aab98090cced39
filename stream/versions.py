"""``musicrec versions list|prune``: the model versions on disk, what each one is to the system
(published, previous, A/B arm, served by a live worker, refused by the gate), and pruning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index_manager.artifacts import ArtifactError
from index_manager.registry import VersionRegistry
from stream.abtest import current_test
from stream.redis_store import RedisKeys, connect_to, version_registry
from stream.settings import Settings
from stream.worker.stats import read_stats


@dataclass(frozen=True)
class VersionRow:
    version: str
    kind: str | None
    created_at: float | None
    size_bytes: int
    roles: tuple[str, ...]  # published, previous, ab-treatment, served (by a live worker), refused
    hr_at_10: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, roles=list(self.roles))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _hr10(manifest: dict[str, Any]) -> float | None:
    gate = manifest.get("metrics", {}).get("gate", {})
    value = gate.get("candidate", {}).get("hr@10") if isinstance(gate.get("candidate"), dict) else None
    return float(value) if isinstance(value, int | float) else None


class VersionsView:
    """The registry plus what Redis says about each version: one object per command."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.stream
        client, keys = connect_to(cfg), RedisKeys(cfg.redis_namespace)
        self.registry: VersionRegistry = version_registry(client, keys, cfg.artifacts_dir)
        test = current_test(client, keys)
        self.treatment = None if test is None else test.treatment
        # every worker whose stats are still in Redis (they expire minutes after it stops): a worker
        # that refused the newest version keeps serving an older one, which must stay on disk
        self.served = {str(s["version"]) for s in read_stats(client, keys) if s.get("version")}
        self.refused = {r["version"] for r in self.registry.history() if "refused_at" in r}

    def protected(self) -> set[str]:
        """Versions pruning must keep besides the newest ones and the published and previous ones."""
        return self.served | ({self.treatment} if self.treatment else set())

    def rows(self) -> list[VersionRow]:
        published, previous = self.registry.published(), self.registry.previous()
        out = []
        for version in self.registry.versions():
            try:
                manifest = self.registry.manifest(version)
            except ArtifactError:
                manifest = {}
            roles = [name for name, on in (("published", version == published), ("previous", version == previous),
                                           ("ab-treatment", version == self.treatment),
                                           ("served", version in self.served), ("refused", version in self.refused))
                     if on]
            created = manifest.get("created_at")
            out.append(VersionRow(version, manifest.get("kind"), float(created) if created is not None else None,
                                  _size(self.registry.root / version), tuple(roles), _hr10(manifest)))
        return out

    def prune(self, keep: int, dry_run: bool = False) -> list[str]:
        return self.registry.prune(keep, self.protected(), dry_run=dry_run)
