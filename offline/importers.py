"""Importers of public data sets into the generic event file and catalog formats.

Catalog file (Parquet): ``song_id, title, artist, genre, ts`` plus one float column per content
feature named ``feat_<name>``.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from offline.eventfile import BadInputFile, write_event_file
from online_models.batch import EventBatch

SPOTIFY_FEATURES = ("danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
                    "instrumentalness", "liveness", "valence", "tempo", "duration_ms")
# Tag dates in the HetRec file before this year are known to be bogus (1956, 1957, 1979 rows).
LASTFM_FIRST_YEAR = 2005


@dataclass(frozen=True)
class ImportResult:
    events_path: Path
    catalog_path: Path
    n_events: int
    n_songs: int
    n_users: int
    skipped: int
    extra: dict[str, Path]


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _need(path: Path) -> Path:
    if not path.is_file():
        raise BadInputFile(f"{path}: no such file")
    return path


def import_lastfm(directory: str | Path, out_dir: str | Path) -> ImportResult:
    """HetRec 2011 Last.fm: dated tag assignments become play events (one per user, artist and day;
    several tags on one day are one engagement) at UTC midnight of their date; artists are the songs.
    The undated listening counts (user_artists.dat) are written alongside as ``lastfm-plays.parquet``.
    """
    d = Path(directory)
    tagged, artists, plays = (_need(d / "user_taggedartists.dat"), _need(d / "artists.dat"),
                              _need(d / "user_artists.dat"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = "delim='\t', header=true, quote='', escape='', all_varchar=true"
    try:
        with closing(duckdb.connect()) as con:
            total = con.execute(f"SELECT count(*) FROM read_csv({_q(tagged)}, {opts})").fetchall()[0][0]
            t = con.sql(f"""
                SELECT * FROM (
                    SELECT DISTINCT userID AS user_id, artistID AS song_id,
                           epoch(make_timestamp(CAST(year AS BIGINT), CAST(month AS BIGINT),
                                                CAST(day AS BIGINT), 0, 0, 0)) AS ts
                    FROM read_csv({_q(tagged)}, {opts})
                    WHERE CAST(year AS BIGINT) >= {LASTFM_FIRST_YEAR})
                ORDER BY ts, CAST(user_id AS BIGINT), CAST(song_id AS BIGINT)""").to_arrow_table()
            bogus = con.execute(f"SELECT count(*) FROM read_csv({_q(tagged)}, {opts}) "
                                f"WHERE CAST(year AS BIGINT) < {LASTFM_FIRST_YEAR}").fetchall()[0][0]
            catalog = con.sql(f"""
                SELECT id AS song_id, name AS title, name AS artist, NULL::VARCHAR AS genre, 0.0 AS ts
                FROM read_csv({_q(artists)}, {opts}) ORDER BY CAST(id AS BIGINT)""").to_arrow_table()
            counts = con.sql(f"""
                SELECT userID AS user_id, artistID AS song_id, CAST(weight AS BIGINT) AS plays
                FROM read_csv({_q(plays)}, {opts})""").to_arrow_table()
    except duckdb.Error as exc:
        raise BadInputFile(f"{d}: not the HetRec Last.fm layout ({str(exc).splitlines()[0]})") from exc
    users = t.column("user_id").to_numpy(zero_copy_only=False)
    songs = t.column("song_id").to_numpy(zero_copy_only=False)
    ts = t.column("ts").to_numpy()
    ids = np.char.add(np.char.add(np.char.add("lastfm:", users.astype(str)), ":"),
                      np.char.add(np.char.add(songs.astype(str), ":"), ts.astype(np.int64).astype(str)))
    batch = EventBatch.from_columns(users, songs, None, ts, None, ids.astype(object))
    events_path = write_event_file(batch, out / "lastfm-events.parquet")
    catalog_path = out / "lastfm-catalog.parquet"
    pq.write_table(catalog, catalog_path)
    plays_path = out / "lastfm-plays.parquet"
    pq.write_table(counts, plays_path)
    return ImportResult(events_path, catalog_path, len(batch), catalog.num_rows, len(np.unique(users)),
                        int(bogus), {"plays": plays_path, "tag_rows": Path(str(total))})


# MovieLens ratings are 0.5-5 stars; a rating at or below this is a skip (the user sampled the film and
# disliked it), anything above a play. Ratings carry no play length, so every play counts fully.
MOVIELENS_SKIP_AT_OR_BELOW = 2.0


def import_movielens(directory: str | Path, out_dir: str | Path) -> ImportResult:
    """MovieLens (ml-latest-small layout): each rating becomes one event at its own second, a play when
    rated above MOVIELENS_SKIP_AT_OR_BELOW stars and a skip otherwise; films are the songs (title and
    first genre in the catalog). The one public log here whose order inside a day is real."""
    d = Path(directory)
    ratings, movies = _need(d / "ratings.csv"), _need(d / "movies.csv")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with closing(duckdb.connect()) as con:
            t = con.sql(f"""
                SELECT CAST(userId AS VARCHAR) AS user_id, CAST(movieId AS VARCHAR) AS song_id,
                       CAST(timestamp AS DOUBLE) AS ts,
                       CASE WHEN CAST(rating AS DOUBLE) <= {MOVIELENS_SKIP_AT_OR_BELOW} THEN 'skip'
                            ELSE 'play' END AS event
                FROM read_csv({_q(ratings)}, header=true, all_varchar=true)
                ORDER BY ts, CAST(userId AS BIGINT), CAST(movieId AS BIGINT)""").to_arrow_table()
            catalog = con.sql(f"""
                SELECT CAST(movieId AS VARCHAR) AS song_id, title, NULL::VARCHAR AS artist,
                       split_part(genres, '|', 1) AS genre, 0.0 AS ts
                FROM read_csv({_q(movies)}, header=true, all_varchar=true)
                ORDER BY CAST(movieId AS BIGINT)""").to_arrow_table()
    except duckdb.Error as exc:
        raise BadInputFile(f"{d}: not the MovieLens ratings.csv/movies.csv layout "
                           f"({str(exc).splitlines()[0]})") from exc
    users = t.column("user_id").to_numpy(zero_copy_only=False)
    songs = t.column("song_id").to_numpy(zero_copy_only=False)
    ts = t.column("ts").to_numpy()
    ids = np.char.add(np.char.add(np.char.add("movielens:", users.astype(str)), ":"), songs.astype(str))
    batch = EventBatch.from_columns(users, songs, t.column("event").to_numpy(zero_copy_only=False), ts, None,
                                    ids.astype(object))
    events_path = write_event_file(batch, out / "movielens-events.parquet")
    catalog_path = out / "movielens-catalog.parquet"
    pq.write_table(catalog, catalog_path)
    return ImportResult(events_path, catalog_path, len(batch), catalog.num_rows, len(np.unique(users)), 0, {})


def import_spotify(csv_path: str | Path, out_dir: str | Path) -> ImportResult:
    """TidyTuesday Spotify songs: one catalog row per track (first playlist's genre) with its audio
    features, plus ``spotify-playlists.parquet`` (playlist_id, song_id, genre) for content tests and a
    playlist-as-user event file dated by album release."""
    src = _need(Path(csv_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats = ", ".join(f"TRY_CAST({f} AS DOUBLE) AS feat_{f}" for f in SPOTIFY_FEATURES)
    release = ("epoch(coalesce(TRY_CAST(track_album_release_date AS DATE), "
               "TRY_CAST(track_album_release_date || '-01' AS DATE), "
               "TRY_CAST(track_album_release_date || '-01-01' AS DATE)))")
    try:
        with closing(duckdb.connect()) as con:
            con.execute(f"CREATE TABLE s AS SELECT *, row_number() OVER () AS line "
                        f"FROM read_csv({_q(src)}, header=true, all_varchar=true)")
            missing = {"track_id", "track_name", "track_artist", "playlist_id", "playlist_genre",
                       *SPOTIFY_FEATURES} - {r[0] for r in con.execute("DESCRIBE s").fetchall()}
            if missing:
                raise BadInputFile(f"{src}: missing column(s) {', '.join(sorted(missing))}")
            catalog = con.sql(f"""
                SELECT track_id AS song_id, any_value(track_name ORDER BY line) AS title,
                       any_value(track_artist ORDER BY line) AS artist,
                       any_value(playlist_genre ORDER BY line) AS genre,
                       coalesce(any_value({release} ORDER BY line), 0.0) AS ts,
                       {", ".join(f"any_value(feat_{f} ORDER BY line) AS feat_{f}" for f in SPOTIFY_FEATURES)}
                FROM (SELECT *, {feats} FROM s WHERE track_id IS NOT NULL)
                GROUP BY track_id ORDER BY min(line)""").to_arrow_table()
            playlists = con.sql("""
                SELECT DISTINCT playlist_id, track_id AS song_id, playlist_genre AS genre, playlist_name
                FROM s WHERE track_id IS NOT NULL AND playlist_id IS NOT NULL
                ORDER BY playlist_id, song_id""").to_arrow_table()
            ev = con.sql(f"""
                SELECT * FROM (
                    SELECT DISTINCT 'pl:' || playlist_id AS user_id, track_id AS song_id,
                           greatest(coalesce({release}, 0.0), 0.0) AS ts
                    FROM s WHERE track_id IS NOT NULL AND playlist_id IS NOT NULL)
                ORDER BY ts, user_id, song_id""").to_arrow_table()
            skipped = con.execute("SELECT count(*) FROM s WHERE track_id IS NULL").fetchall()[0][0]
    except duckdb.Error as exc:
        raise BadInputFile(f"{src}: cannot be read as the Spotify songs CSV ({str(exc).splitlines()[0]})") from exc
    catalog_path = out / "spotify-catalog.parquet"
    pq.write_table(catalog, catalog_path)
    playlists_path = out / "spotify-playlists.parquet"
    pq.write_table(playlists, playlists_path)
    users = ev.column("user_id").to_numpy(zero_copy_only=False)
    batch = EventBatch.from_columns(users, ev.column("song_id").to_numpy(zero_copy_only=False), None,
                                    ev.column("ts").to_numpy(), None,
                                    np.char.add("spotify:", np.char.add(np.char.add(users.astype(str), ":"),
                                                ev.column("song_id").to_numpy(zero_copy_only=False).astype(str)))
                                    .astype(object))
    events_path = write_event_file(batch, out / "spotify-playlist-events.parquet")
    return ImportResult(events_path, catalog_path, len(batch), catalog.num_rows, len(np.unique(users)),
                        int(skipped), {"playlists": playlists_path})
