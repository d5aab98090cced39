"""Event files, the Parquet/DuckDB event log and the importers of the shared data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from offline.compaction import compact, compact_own
from offline.eventfile import BadInputFile, read_event_file, write_event_file
from offline.eventlog import EventLog
from offline.importers import import_movielens, import_spotify
from online_models.batch import SKIP
from tests.synthetic import synthetic_log


def test_csv_round_trip_and_defaults(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user_id,song_id,ts,event,ms_played\nu1,s1,100,play,3000\nu2,s2,2021-01-01T00:00:00,,\n"
                 "u1,s3,101.5,SKIP,\n")
    batch, skipped = read_event_file(p)
    assert skipped == 0 and list(batch.user_ids) == ["u1", "u2", "u1"]
    assert batch.ts[1] == 1609459200.0 and list(batch.kinds) == [1, 1, -1]
    assert batch.ms_played[0] == 3000 and np.isnan(batch.ms_played[1:]).all()
    assert list(batch.event_ids) == ["e.csv:2", "e.csv:3", "e.csv:4"]
    out = write_event_file(batch, tmp_path / "copy.parquet")
    again, _ = read_event_file(out)
    assert list(again.event_ids) == list(batch.event_ids)


def test_bad_rows_name_their_line_or_are_skipped(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("user_id,song_id,ts,event\nu1,s1,100,play\nu2,,100,play\nu3,s3,soon,play\nu4,s4,5,like\n")
    with pytest.raises(BadInputFile, match=r"bad.csv:3: song_id is empty \(of 3 bad rows"):
        read_event_file(p)
    batch, skipped = read_event_file(p, skip_bad=True)
    assert len(batch) == 1 and skipped == 3


def test_missing_columns_and_files(tmp_path: Path) -> None:
    p = tmp_path / "cols.csv"
    p.write_text("user,song\nu,s\n")
    with pytest.raises(BadInputFile, match="missing column"):
        read_event_file(p)
    with pytest.raises(BadInputFile, match="no such file"):
        read_event_file(tmp_path / "nope.csv")
    with pytest.raises(BadInputFile, match="unsupported"):
        (tmp_path / "x.json").write_text("{}")
        read_event_file(tmp_path / "x.json")


def test_log_dedups_redelivered_events_and_compacts(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    events = synthetic_log(n_events=500)
    log.append(events.take(slice(0, 300)))
    log.append(events.take(slice(200, 500)))  # 100 redelivered
    assert log.range().n_events == 500
    assert compact(log, min_segments=2) == 2
    assert len(log.segments()) == 1 and log.range().n_events == 500
    back = log.read()
    assert sorted(back.event_ids) == sorted(events.event_ids)
    assert (np.diff(back.ts) >= 0).all()


def test_writer_compacts_only_its_own_segments(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    events = synthetic_log(n_events=400)
    for i in range(4):
        log.append(events.take(slice(i * 80, (i + 1) * 80)), writer="worker/a")
    log.append(events.take(slice(320, 400)), writer="worker-b")
    assert compact_own(log, "worker/a", min_segments=5) == 0  # too few to bother
    assert compact_own(log, "worker/a", min_segments=4) == 4
    names = sorted(p.name for p in log.segments())
    assert len(names) == 2 and any("merged4" in n for n in names)
    assert any("wworker_b" in n for n in names)  # the other writer's segment is untouched
    assert sorted(log.read().event_ids) == sorted(events.event_ids)


def test_lastfm_import(lastfm_import) -> None:  # type: ignore[no-untyped-def]
    r = lastfm_import
    assert r.n_users == 1892 and r.n_songs == 17632
    batch, skipped = read_event_file(r.events_path)
    assert skipped == 0 and len(batch) == r.n_events
    # dated engagements: distinct (user, artist, day) of the 186,479 tag rows, bogus years dropped
    assert 80_000 < len(batch) < 186_479 and r.skipped > 0
    assert batch.ts.min() >= 1104537600  # 2005-01-01
    assert len(np.unique(batch.event_ids)) == len(batch)
    plays = pq.read_table(r.extra["plays"])
    assert plays.num_rows == 92834


def test_movielens_import_known_answers(tmp_path: Path) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                     "2,10,2.0,300\n1,10,4.5,100\n1,20,0.5,200\n2,20,2.5,300\n")
    (src / "movies.csv").write_text('movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n'
                                    "20,Up (2009),Animation\n")
    r = import_movielens(src, tmp_path / "out")
    assert (r.n_events, r.n_users, r.n_songs) == (4, 2, 2)
    batch, skipped = read_event_file(r.events_path)
    assert skipped == 0
    # time order, ties by user then film; 2 stars and below are skips
    assert list(batch.user_ids) == ["1", "1", "2", "2"] and list(batch.song_ids) == ["10", "20", "10", "20"]
    assert list(batch.ts) == [100.0, 200.0, 300.0, 300.0]
    assert list(batch.kinds == SKIP) == [False, True, True, False]
    catalog = pq.read_table(r.catalog_path).to_pylist()
    assert [(c["title"], c["genre"]) for c in catalog] == [("Heat, The (1995)", "Action"), ("Up (2009)", "Animation")]


def test_movielens_import_real_file(movielens_dir: Path, tmp_path: Path) -> None:
    r = import_movielens(movielens_dir, tmp_path)
    assert (r.n_events, r.n_users) == (100_004, 671)
    batch, _ = read_event_file(r.events_path)
    assert (np.diff(batch.ts) >= 0).all() and len(np.unique(batch.event_ids)) == len(batch)
    assert 0.05 < (batch.kinds == SKIP).mean() < 0.3


def test_spotify_import(spotify_csv: Path, tmp_path: Path) -> None:
    r = import_spotify(spotify_csv, tmp_path)
    catalog = pq.read_table(r.catalog_path)
    assert catalog.num_rows == 28356 == r.n_songs
    assert {"feat_danceability", "feat_tempo", "genre"} <= set(catalog.column_names)
    assert set(catalog.column("genre").to_pylist()) == {"edm", "rap", "pop", "r&b", "latin", "rock"}
    playlists = pq.read_table(r.extra["playlists"])
    assert len(set(playlists.column("playlist_id").to_pylist())) == 471
    batch, _ = read_event_file(r.events_path)
    assert len(batch) == r.n_events and (batch.ts >= 0).all()
