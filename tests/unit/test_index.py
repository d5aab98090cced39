"""FAISS song index, artifacts on disk, and the swap holder."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from index_manager.artifacts import (
    ArtifactError,
    ModelArtifact,
    latest_version,
    list_versions,
    load_artifact,
    save_artifact,
)
from index_manager.holder import ModelHolder
from index_manager.keys import song_key, song_keys
from index_manager.song_index import IndexFailure, SongIndex, from_parts


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_keys_are_stable_and_positive() -> None:
    keys = song_keys(np.array(["a", "b", "a"], dtype=object))
    assert keys[0] == keys[2] != keys[1]
    assert (keys >= 0).all()
    # a fixed value: keys must never change between releases or processes (they are FAISS ids)
    assert song_key("a") == int(keys[0]) == 3405396810240292928


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_finds_exact_top1(kind: str) -> None:
    names = np.array([f"s{i}" for i in range(500)], dtype=object)
    x = vectors(500)
    index = SongIndex(names, x, kind=kind)  # type: ignore[arg-type]
    exact = np.argmax(x[:20] @ x.T, axis=1)
    keys, scores = index.search(x[:20], 5)
    found = index.names_of(keys[:, 0])
    hit = np.mean(found == names[exact])
    assert hit >= (1.0 if kind == "flat" else 0.8)
    assert (np.diff(scores, axis=1) <= 1e-5).all()


def test_add_makes_a_song_searchable_and_replaces_vectors() -> None:
    index = SongIndex(np.array(["a", "b"], dtype=object), vectors(2))
    q = np.ones((1, 8), np.float32)
    index.add(np.array(["new"], dtype=object), 10 * q)
    keys, _ = index.search(q, 1)
    assert index.names_of(keys)[0, 0] == "new"
    index.add(np.array(["new"], dtype=object), -10 * q)  # replaced, not duplicated
    keys, _ = index.search(q, 3)
    assert list(index.names_of(keys)[0]).count("new") == 1
    assert index.names_of(keys)[0, -1] == "new"
    assert len(index) == 3


def test_bad_vectors_are_refused_with_value_errors() -> None:
    index = SongIndex(np.array(["a"], dtype=object), vectors(1))
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.array(["x"], dtype=object), vectors(1, d=5))
    bad = vectors(1)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.array(["x"], dtype=object), bad)
    with pytest.raises(ValueError):
        index.search(vectors(1), 0)
    assert len(index) == 1


def test_hnsw_cannot_replace_in_place() -> None:
    names = np.array([f"s{i}" for i in range(50)], dtype=object)
    index = SongIndex(names, vectors(50), kind="hnsw")
    with pytest.raises(IndexFailure):
        index.add(names[:1], vectors(1, seed=3))


def test_pads_when_fewer_songs_than_k() -> None:
    index = SongIndex(np.array(["a", "b"], dtype=object), vectors(2))
    keys, scores = index.search(vectors(1, seed=5), 4)
    assert (keys[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
    assert list(index.names_of(keys)[0, 2:]) == ["", ""]


def make_artifact(n: int = 20) -> ModelArtifact:
    names = np.array([f"s{i}" for i in range(n)], dtype=object)
    x = vectors(n)
    return ModelArtifact(kind="als", song_names=names, item_factors=x, user_names=np.array(["u"], dtype=object),
                         user_factors=vectors(1), popularity=np.arange(n, dtype=float),
                         params={"alpha": 2.0}, index_bytes=SongIndex(names, x).to_bytes(),
                         files={"extra.bin": b"\x00\x01"}, arrays={"w": np.eye(3)})


def test_artifact_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    art = make_artifact()
    version = save_artifact(tmp_path, art)
    assert list_versions(tmp_path) == [version] == [latest_version(tmp_path)]
    back = load_artifact(tmp_path, version)
    np.testing.assert_array_equal(back.item_factors, art.item_factors)
    assert list(back.song_names) == list(art.song_names)
    assert back.files == {"extra.bin": b"\x00\x01"} and back.params == {"alpha": 2.0}
    np.testing.assert_array_equal(back.arrays["w"], np.eye(3))


def test_corrupt_or_half_written_artifacts_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    version = save_artifact(tmp_path, make_artifact())
    (tmp_path / version / "item_factors.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path, version)
    v2 = save_artifact(tmp_path, make_artifact())
    (tmp_path / v2 / "index.faiss").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path, v2)
    # a temporary directory from a crashed writer is never listed
    (tmp_path / ".tmp-20990101T000000000000Z-als-x").mkdir()
    assert ".tmp" not in "".join(list_versions(tmp_path))


def test_pickled_arrays_are_never_loaded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import io

    version = save_artifact(tmp_path, make_artifact())
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    blob = buf.getvalue()
    (tmp_path / version / "popularity.npy").write_bytes(blob)
    manifest = json.loads((tmp_path / version / "manifest.json").read_text())
    manifest["files"]["popularity.npy"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (tmp_path / version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path, version)


def test_holder_swaps_forward_only_and_readers_see_whole_pairs() -> None:
    holder: ModelHolder[tuple[str, int]] = ModelHolder()
    assert holder.swap(("v1", 1), "v1")
    assert not holder.swap(("v0", 0), "v0"), "versions only move forward"
    seen: list[tuple[tuple[str, int], str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            model, version = holder.get()
            seen.append((model, version))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2, 200):
        holder.swap((f"v{i:03d}", i), f"v{i:03d}")
    stop.set()
    t.join()
    assert all(model[0] == version for model, version in seen)


def test_ivf_results_stay_right_after_songs_are_replaced() -> None:
    # IndexIDMap2 over IVF mapped every later result to the wrong song once one song was replaced
    names = np.array([f"s{i}" for i in range(3000)], dtype=object)
    x = vectors(3000)
    index = SongIndex(names, x.copy(), kind="ivf")
    index.faiss_index.nprobe = index.faiss_index.nlist  # exhaustive: results must equal brute force
    for j in range(5):
        index.add(names[j:j + 1], 1.5 * x[j:j + 1])
    q = vectors(40, seed=9)
    keys, _ = index.search(q, 1)
    assert list(index.names_of(keys[:, 0])) == list(names[np.argmax(q @ index.factors.T, axis=1)])
    again = from_parts(index.names, index.factors, index.to_bytes())
    assert again.kind == "ivf"
    again.add(names[7:8], x[7:8])
    again.faiss_index.nprobe = again.faiss_index.nlist
    keys, _ = again.search(q, 1)
    assert list(again.names_of(keys[:, 0])) == list(names[np.argmax(q @ again.factors.T, axis=1)])
