"""Fixtures every tier shares (the data sets), and the tiers themselves: every test under
``tests/services/`` is marked ``services`` by its directory, so ``-m "not services"`` runs the unit
tests alone, in-process (no broker, no redis-server, no worker, CLI or tool subprocess)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = Path(__file__).resolve().parent / "services"


def shared_data() -> Path:
    """../shared/data next to the checkout (MUSICREC_SHARED_DATA overrides)."""
    candidates = [os.environ.get("MUSICREC_SHARED_DATA", ""), str(REPO.parent / "shared" / "data"),
                  "/work/shared/data"]
    for c in candidates:
        if c and Path(c, "hetrec2011-lastfm-2k").is_dir():
            return Path(c)
    raise RuntimeError("shared data not found; set MUSICREC_SHARED_DATA to the directory holding "
                       "hetrec2011-lastfm-2k and spotify-songs-tidytuesday")


@pytest.fixture(scope="session")
def data_root() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def lastfm_dir(data_root: Path) -> Path:
    return data_root / "hetrec2011-lastfm-2k"


@pytest.fixture(scope="session")
def spotify_csv(data_root: Path) -> Path:
    return data_root / "spotify-songs-tidytuesday" / "spotify_songs.csv"


@pytest.fixture(scope="session")
def movielens_dir(data_root: Path) -> Path:
    return data_root / "movielens-latest-small"


@pytest.fixture(scope="session")
def lastfm_import(tmp_path_factory: pytest.TempPathFactory, lastfm_dir: Path):  # type: ignore[no-untyped-def]
    from offline.importers import import_lastfm

    return import_lastfm(lastfm_dir, tmp_path_factory.mktemp("lastfm"))


def pytest_configure(config: pytest.Config) -> None:
    # the worker subprocesses and the tests share 2 cores; keep BLAS from oversubscribing them
    import faiss
    from threadpoolctl import threadpool_limits

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    threadpool_limits(1, "blas")
    faiss.omp_set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(SERVICES):
            item.add_marker(pytest.mark.services)
