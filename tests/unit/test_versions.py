"""The one registry of model versions (publish, pointer, history) and the one policy every reader
follows it with (``VersionFollower``): forward only, a broken version refused once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index_manager.artifacts import ArtifactError, ModelArtifact, save_artifact
from index_manager.follower import VersionFollower
from index_manager.holder import ModelHolder
from index_manager.registry import MemoryPointer, VersionRegistry


def test_publish_and_refusals_are_in_the_history_newest_first(tmp_path: Path) -> None:
    registry = VersionRegistry(tmp_path, MemoryPointer())
    assert registry.published() is None and registry.published_artifact() is None
    registry.publish("v1", {"hr@10": 0.5})
    registry.refuse("v2", {"publish": False})
    assert registry.published() == "v1", "a refusal leaves the pointer alone"
    history = registry.history()
    assert [h["version"] for h in history] == ["v2", "v1"]
    assert history[0]["gate"] == {"publish": False} and history[1]["metrics"] == {"hr@10": 0.5}
    for i in range(150):
        registry.refuse(f"r{i}", {})
    assert len(registry.history()) == 100


def test_the_published_artifact_is_loaded_or_reported(tmp_path: Path) -> None:
    artifact = ModelArtifact("als", np.array(["s1", "s2"], dtype=object), np.eye(2, dtype=np.float32),
                             np.array(["u"], dtype=object), np.ones((1, 2), np.float32), np.ones(2))
    version = save_artifact(tmp_path, artifact)
    registry = VersionRegistry(tmp_path, MemoryPointer())
    registry.publish(version)
    loaded = registry.published_artifact()
    assert loaded is not None and loaded.version == version
    registry.publish("20991231T000000000000Z-als")  # not on disk
    assert registry.published_artifact() is None


class Loader:
    """Loads versions by name; a name in ``broken`` fails the way a corrupt artifact does."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.calls: list[str] = []

    def __call__(self, version: str) -> str:
        self.calls.append(version)
        if version in self.broken:
            raise ArtifactError(f"version {version}: checksum mismatch")
        return f"model of {version}"


def test_versions_only_move_forward() -> None:
    follower = VersionFollower(Loader(set()), ModelHolder[str]())
    assert follower.follow("v2") and follower.holder.get() == ("model of v2", "v2")
    assert not follower.follow("v1") and not follower.follow("v2") and not follower.follow(None)
    assert follower.follow("v3") and follower.swaps == 2


def test_a_refused_version_is_not_retried_while_the_pointer_names_it() -> None:
    loader = Loader({"v2"})
    follower = VersionFollower(loader)
    assert follower.follow("v1")
    for _ in range(5):
        assert not follower.follow("v2")
    assert loader.calls == ["v1", "v2"] and follower.refused == 1, "refused once, loaded once"
    assert follower.holder.version == "v1", "the previous version keeps serving"
    assert "checksum" in str(follower.last_error)
    # the pointer moves on, then back to the broken version (re-published after a repair, say)
    loader.broken.clear()
    assert follower.follow("v3") and follower.holder.version == "v3"
    assert not follower.follow("v2"), "older than what serves"
    follower2 = VersionFollower(loader)
    loader.broken.add("v4")
    assert not follower2.follow("v4") and not follower2.follow("v4")
    loader.broken.clear()
    assert follower2.follow("v3") and follower2.holder.version == "v3"
    assert follower2.follow("v4"), "a refusal is forgotten once the pointer named another version"


def test_prepare_then_install_is_follow_in_two_steps() -> None:
    follower = VersionFollower(Loader(set()))
    model = follower.prepare("v1")
    assert model == "model of v1" and follower.holder.version is None, "prepared aside, not served yet"
    assert follower.install(model, "v1") and follower.holder.version == "v1"
    assert follower.prepare("v1") is None, "nothing to do for the version that serves"
