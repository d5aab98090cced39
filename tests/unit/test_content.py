"""New songs from content: the projection's maths, and held-out Spotify songs found by their genre."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index_manager.song_index import SongIndex
from offline.catalog import CatalogStore, read_catalog_file
from offline.eventfile import read_event_file
from offline.importers import import_spotify
from online_models.als import train_als
from online_models.config import OnlineConfig
from online_models.content import (
    ContentProjection,
    attach_projection,
    feature_matrix,
    feature_names,
    new_song_vectors,
)
from online_models.interactions import Interactions


def test_projection_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) * [1, 10, 100, 0.1, 1] + 3
    true_w = rng.normal(size=(5, 4))
    y = x @ true_w + 0.5
    proj = ContentProjection.fit([f"f{i}" for i in range(5)], x, y, regularization=1e-9)
    np.testing.assert_allclose(proj.project(x[:7]), y[:7], rtol=1e-4, atol=1e-4)
    arrays, names = proj.to_arrays()
    back = ContentProjection.from_arrays(arrays, names)
    assert back is not None
    np.testing.assert_allclose(back.project(x[:3]), proj.project(x[:3]))
    with pytest.raises(ValueError):
        proj.project(x[:, :4])  # wrong length
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        proj.project(bad)


def test_feature_matrix_flags_missing_features_and_one_hots_genres() -> None:
    feats = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0, "c": 9.0}, {"a": 5.0}]
    names = feature_names(feats[:2], ["pop", "rock"])
    assert names == ("a", "b", "genre=pop", "genre=rock")
    x, ok = feature_matrix(names, feats, ["rock", None, "pop"])
    assert ok.tolist() == [True, True, False]
    assert x[0].tolist() == [1.0, 2.0, 0.0, 1.0]
    assert x[1].tolist() == [3.0, 4.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def spotify(tmp_path_factory: pytest.TempPathFactory, spotify_csv: Path):  # type: ignore[no-untyped-def]
    return import_spotify(spotify_csv, tmp_path_factory.mktemp("spotify"))


def test_held_out_songs_are_retrieved_for_playlists_of_their_genre(spotify, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events, _ = read_event_file(spotify.events_path)
    store = CatalogStore(tmp_path / "catalog")
    store.import_file(spotify.catalog_path)
    catalog = store.read()
    assert len(catalog) == 28356
    songs = np.array(catalog.song_ids, dtype=object)
    genre_of = dict(zip(catalog.song_ids, catalog.genres, strict=True))
    playlists = pq.read_table(spotify.extra["playlists"]).to_pylist()
    playlist_genre = {f"pl:{r['playlist_id']}": r["genre"] for r in playlists}
    held = set(np.random.default_rng(7).choice(songs, size=len(songs) // 10, replace=False).tolist())
    # the model never sees the held-out songs; they arrive later as catalog events
    config = OnlineConfig(factors=32, iterations=10)
    train = events.take(~np.isin(events.song_ids, list(held)))
    artifact = train_als(Interactions.from_events(train, config), config)
    rows = [i for i, s in enumerate(catalog.song_ids) if s not in held]
    assert attach_projection(artifact, [catalog.song_ids[i] for i in rows], [catalog.features[i] for i in rows],
                             [catalog.genres[i] for i in rows], config.new_song_norm_quantile)
    proj = ContentProjection.from_arrays(artifact.arrays, artifact.lists["content_features"])
    assert proj is not None and "genre=rock" in proj.names and "tempo" in proj.names
    new = [i for i, s in enumerate(catalog.song_ids) if s in held]
    x, ok = feature_matrix(proj.names, [catalog.features[i] for i in new], [catalog.genres[i] for i in new])
    index = SongIndex(artifact.song_names, artifact.item_factors)
    index.add(songs[new][ok], new_song_vectors(proj, x[ok], artifact.params["new_song_norm"]))
    keys, _ = index.search(artifact.user_factors, 100)
    retrieved = index.names_of(keys)
    pairs = [(playlist_genre[u], s) for u, row in zip(artifact.user_names, retrieved, strict=True)
             for s in row if s in held]
    precision = np.mean([g == genre_of[s] for g, s in pairs])
    base = max(np.mean([genre_of[s] == g for s in held]) for g in set(genre_of.values()))
    assert len(pairs) > 200, "new songs must actually be retrieved"
    assert precision > max(0.5, 2.5 * base), (precision, base)


def test_catalog_file_round_trip(spotify, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = read_catalog_file(spotify.catalog_path)
    assert len(rows) == 28356 and set(rows.features[0]) >= {"tempo", "danceability", "energy"}
    store = CatalogStore(tmp_path)
    store.append(rows)
    rows.titles[0] = "renamed"
    store.append(rows)
    back = store.read()
    assert len(back) == 28356 and "renamed" in back.titles
