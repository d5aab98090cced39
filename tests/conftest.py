"""Shared fixtures: real embedded services (Tansu broker, redis-server), isolated settings per test,
a worker subprocess, and the shared data sets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.settings import Settings, load_settings, with_endpoints

REPO = Path(__file__).resolve().parents[1]


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
def lastfm_import(tmp_path_factory: pytest.TempPathFactory, lastfm_dir: Path):  # type: ignore[no-untyped-def]
    from offline.importers import import_lastfm

    return import_lastfm(lastfm_dir, tmp_path_factory.mktemp("lastfm"))


@pytest.fixture(scope="session")
def services() -> Iterator[object]:
    from stream.services import EmbeddedServices

    with EmbeddedServices() as s:
        yield s


@pytest.fixture
def make_settings(services, tmp_path: Path) -> Callable[..., Settings]:  # type: ignore[no-untyped-def]
    """Settings isolated per test: own topics, consumer group, Redis namespace and data dir."""

    def make(**overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:8]
        values = {"events_topic": f"events-{tag}", "songs_topic": f"songs-{tag}", "dlq_topic": f"dlq-{tag}",
                  "app_id": f"app-{tag}", "redis_namespace": f"t{tag}", "data_dir": str(tmp_path / "data"),
                  "partitions": 2, "session_timeout": 6.0, "model_poll": 0.5, "batch_within": 0.02,
                  **overrides}
        return with_endpoints(load_settings(values, env={}), services.kafka_bootstrap, services.redis_url)

    return make


def settings_env(settings: Settings) -> dict[str, str]:
    cfg = settings.stream
    return {"KAFKA_BOOTSTRAP": cfg.kafka_bootstrap, "REDIS_URL": cfg.redis_url,
            "MUSICREC_DATA_DIR": cfg.data_dir, "MUSICREC_EVENTS_TOPIC": cfg.events_topic,
            "MUSICREC_SONGS_TOPIC": cfg.songs_topic, "MUSICREC_DLQ_TOPIC": cfg.dlq_topic,
            "MUSICREC_APP_ID": cfg.app_id, "MUSICREC_REDIS_NAMESPACE": cfg.redis_namespace,
            "MUSICREC_PARTITIONS": str(cfg.partitions), "MUSICREC_SESSION_TIMEOUT": str(cfg.session_timeout),
            "MUSICREC_MODEL_POLL": str(cfg.model_poll), "MUSICREC_BATCH_WITHIN": str(cfg.batch_within),
            "MUSICREC_FACTORS": str(settings.model.factors), "MUSICREC_K": str(cfg.k)}


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **settings_env(settings))
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


class WorkerProcess:
    """A `musicrec worker` subprocess with helpers to wait on its published counters."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        from stream.redis_store import RedisKeys, connect

        self.redis = connect(settings.stream.redis_url)
        self.keys = RedisKeys(settings.stream.redis_namespace)

    def start(self) -> WorkerProcess:
        env = dict(os.environ, **settings_env(self.settings))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def stats(self) -> list[dict]:  # type: ignore[type-arg]
        out = []
        for key in self.redis.scan_iter(self.keys.stats_pattern()):
            raw = self.redis.get(key)
            if raw is not None:
                s = json.loads(raw)
                if self.proc is not None and s["worker"].endswith(f"-{self.proc.pid}"):
                    out.append(s)
        return out

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 60, what: str = "condition") -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log_tail()}")
            for s in self.stats():
                if predicate(s):
                    return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; worker log:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60) -> dict:  # type: ignore[type-arg]
        return self.wait(lambda s: True, timeout, "the worker to publish stats")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log").start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def pytest_configure(config: pytest.Config) -> None:
    # the worker subprocesses and the tests share 2 cores; keep BLAS from oversubscribing them
    import faiss
    from threadpoolctl import threadpool_limits

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    threadpool_limits(1, "blas")
    faiss.omp_set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "services" in getattr(item, "fixturenames", ()) or "make_settings" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)
