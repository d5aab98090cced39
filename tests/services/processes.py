"""Processes the service tests drive: the CLI, workers, and publishing a model version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.redis_store import RedisKeys, connect_to, version_registry
from stream.settings import Settings, to_env
from stream.worker.stats import read_stats
from tests.conftest import REPO


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **to_env(settings))
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def publish(settings: Settings, version: str) -> None:
    """Point the settings' workers at ``version``."""
    cfg = settings.stream
    version_registry(connect_to(cfg), RedisKeys(cfg.redis_namespace), cfg.artifacts_dir).publish(version)


def published(settings: Settings) -> str | None:
    cfg = settings.stream
    return version_registry(connect_to(cfg), RedisKeys(cfg.redis_namespace), cfg.artifacts_dir).published()


class WorkerProcess:
    """A `musicrec worker` subprocess with helpers to wait on its published counters."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.redis = connect_to(settings.stream)
        self.keys = RedisKeys(settings.stream.redis_namespace)

    def start(self) -> WorkerProcess:
        env = dict(os.environ, **to_env(self.settings))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def stats(self) -> list[dict[str, Any]]:
        """This worker process's published stats (none before its first publish)."""
        if self.proc is None:
            return []
        return [s for s in read_stats(self.redis, self.keys) if s["worker"].endswith(f"-{self.proc.pid}")]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60, what: str = "condition"
             ) -> dict[str, Any]:
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

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
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


