"""Every setting, declared once: type, default, environment variable and doc.

Values resolve, highest first: explicit overrides (CLI flags) > environment > TOML config file
(``MUSICREC_CONFIG`` or ``./musicrec.toml``) > declared default. Each config class is a section
with its own namespace: a table ``[stream]``, ``[model]``, ``[train]``, ``[ncf]`` or ``[sasrec]`` in TOML, a
``"section.field"`` key in overrides (a bare field name only where one section has it). Model
hyper-parameters are declared next to the code that uses them (``online_models.config``) and only
collected here. Nothing is read at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from offline.config import TrainConfig
from online_models.base import MAX_K
from online_models.config import OnlineConfig, check_ranges, setting
from online_models.ncf_config import NCFConfig
from online_models.sasrec_spec import SASRecConfig
from stream.errors import ConfigError

SECRET_FIELDS = frozenset({"kafka_sasl_password", "api_key"})


@dataclass(frozen=True, repr=False)
class StreamConfig:
    kafka_bootstrap: str = setting("", "KAFKA_BOOTSTRAP", "Kafka bootstrap servers (host:port,...). Empty: commands that can start an embedded broker do so.")
    redis_url: str = setting("", "REDIS_URL", "Redis URL (redis:// or rediss://, may carry user:password). Empty: embedded redis-server where allowed.")
    events_topic: str = setting("music.events", "MUSICREC_EVENTS_TOPIC", "Topic of listening events (key = user_id).")
    songs_topic: str = setting("music.songs", "MUSICREC_SONGS_TOPIC", "Topic of the song catalog (key = song_id).")
    dlq_topic: str = setting("music.events.dlq", "MUSICREC_DLQ_TOPIC", "Dead-letter topic: original bytes of refused messages, reason in headers.")
    partitions: int = setting(8, "MUSICREC_PARTITIONS", "Partitions of the events topic when this tool creates it.", gt=0)
    replication_factor: int = setting(1, "MUSICREC_REPLICATION_FACTOR", "Replicas of each topic this tool creates; 3 in production (the embedded broker and the compose file have one broker).", gt=0)
    min_insync_replicas: int = setting(1, "MUSICREC_MIN_INSYNC_REPLICAS", "min.insync.replicas of the topics this tool creates: with the producers' acks=all a write succeeds once this many replicas have it (2 with a replication factor of 3); at most MUSICREC_REPLICATION_FACTOR.", gt=0)
    app_id: str = setting("musicrec", "MUSICREC_APP_ID", "Faust application id = Kafka consumer group of the workers.")
    batch_size: int = setting(2000, "MUSICREC_BATCH_SIZE", "Maximum events per micro-batch in the worker.", gt=0)
    batch_within: float = setting(0.02, "MUSICREC_BATCH_WITHIN", "Seconds the worker waits to fill a micro-batch (a full batch goes at once; this bounds the wait of a quiet stream).", gt=0)
    batch_catchup: float = setting(0.5, "MUSICREC_BATCH_CATCHUP", "Seconds a micro-batch may keep gathering past MUSICREC_BATCH_WITHIN when the worker is behind (Kafka holds at least as many more of its events as the batch has, and a quarter of MUSICREC_BATCH_SIZE): the batch also takes those waiting events while they keep coming, up to MUSICREC_BATCH_SIZE, so a few large batches replace many small ones; 0 = never.", ge=0)
    serve_threads: int = setting(2, "MUSICREC_SERVE_THREADS", "Threads that compute a micro-batch's lists, its users split between them (numpy, BLAS, scipy and FAISS release the GIL: with two, Last.fm batches of 1,000-2,000 events went 1.1-1.25x faster in-process on two cores; in the worker, whose own thread also runs Faust and the learning, they mostly shorten each batch (freshness at 3k-5k ev/s) and add ~2% throughput, for ~25% more CPU); 1 = the worker's own thread only. A part holds at least 32 users, so a quiet stream's small batches stay in one thread.", gt=0)
    fetch_max_wait: float = setting(0.01, "MUSICREC_FETCH_MAX_WAIT", "Seconds a consumer fetch may wait for data; Faust fixes 1.5 s, and a broker that waits out the whole period (the embedded Tansu does) adds up to that to every event's freshness.", gt=0)
    session_timeout: float = setting(10.0, "MUSICREC_SESSION_TIMEOUT", "Kafka consumer session timeout (s); a dead worker's partitions move after this.", gt=0)
    k: int = setting(20, "MUSICREC_K", "Songs stored per user in Redis.", gt=0, le=MAX_K)
    redis_cluster: bool = setting(False, "MUSICREC_REDIS_CLUSTER", "REDIS_URL names one node of a Redis Cluster: use redis-py's cluster client (keys that must share a slot carry hash tags; no multi-key command spans slots).")
    redis_namespace: str = setting("musicrec", "MUSICREC_REDIS_NAMESPACE", "Prefix of every Redis key this project writes.")
    data_dir: str = setting("musicrec-data", "MUSICREC_DATA_DIR", "Directory of the event log (Parquet segments read by DuckDB) and model versions.")
    model_poll: float = setting(2.0, "MUSICREC_MODEL_POLL", "Seconds between a worker's checks for a newly published model version or A/B test.", gt=0)
    warmup_events: int = setting(20_000, "MUSICREC_WARMUP_EVENTS", "Latest logged events a starting worker replays as a live stream (their users' lists, then the events) so the ranker relearns its weights; the rest of the log is folded in directly. A worker restoring k of n partitions replays k/n of them (its share of the stream).", ge=0)
    state_ttl: float = setting(0.0, "MUSICREC_STATE_TTL", "Days without an event (in event time: behind the newest event a worker has seen) after which a user's online state is evicted and not restored; 0 = never. Their list stays in Redis.", ge=0)
    backfill_batch: int = setting(32, "MUSICREC_BACKFILL_BATCH", "Users per batch of lists a worker writes for users without new events (every known user at start and after a swap; lists holding a newly hidden song), each followed by a pause as long, so events keep flowing (32: ~50 ms each on Last.fm here).", gt=0)
    kafka_security_protocol: str = setting("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = setting("", "KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used.")
    kafka_sasl_username: str = setting("", "KAFKA_SASL_USERNAME", "SASL user name.")
    kafka_sasl_password: str = setting("", "KAFKA_SASL_PASSWORD", "SASL password (never logged).")
    kafka_ssl_cafile: str = setting("", "KAFKA_SSL_CAFILE", "CA bundle to verify the brokers' TLS certificates.")
    worker_id: str = setting("", "MUSICREC_WORKER_ID", "Stable name of a worker in metrics and stats (the Prometheus `worker` label); empty = the host name. Give each worker on one host its own.")
    api_key: str = setting("", "MUSICREC_API_KEY", "Key the read API requires as `Authorization: Bearer <key>` on every endpoint but /health and /metrics; empty = open. Never logged.")
    api_max_batch: int = setting(1000, "MUSICREC_API_MAX_BATCH", "Most items in one POST /events or POST /recs/batch request.", gt=0, le=100_000)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"MUSICREC_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) exceeds "
                             f"MUSICREC_REPLICATION_FACTOR ({self.replication_factor}): no write could succeed")

    def __repr__(self) -> str:
        # settings end up in tracebacks and debug logs; secrets must not
        shown = {f.name: "***" if f.name in SECRET_FIELDS and getattr(self, f.name) else getattr(self, f.name)
                 for f in fields(self)}
        return f"StreamConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def log_dir(self) -> Path:
        return Path(self.data_dir) / "log"

    @property
    def catalog_dir(self) -> Path:
        return Path(self.data_dir) / "catalog"

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.data_dir) / "versions"


@dataclass(frozen=True)
class Settings:
    stream: StreamConfig
    model: OnlineConfig
    train: TrainConfig
    ncf: NCFConfig
    sasrec: SASRecConfig


SECTIONS: dict[str, type] = {"stream": StreamConfig, "model": OnlineConfig, "train": TrainConfig, "ncf": NCFConfig,
                             "sasrec": SASRecConfig}


def _convert(raw: Any, typ: Any, where: str) -> Any:
    hint = typ if not isinstance(typ, str) else {"int": int, "float": float, "bool": bool, "str": str}[typ]
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return hint(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {raw!r} is not a valid {hint.__name__}") from exc


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        if isinstance(hint, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[name] = hint
    return out


def declared() -> list[tuple[str, str, str, Any, type, str]]:
    """(section, field, env var, default, type, doc) for every setting, in declaration order."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = _field_types(cls)
        for f in fields(cls):
            rows.append((section, f.name, f.metadata["env"], f.default, hints[f.name], f.metadata["doc"]))
    return rows


def config_path(env: typing.Mapping[str, str]) -> Path | None:
    explicit = env.get("MUSICREC_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MUSICREC_CONFIG={explicit} does not exist")
        return path
    local = Path("musicrec.toml")
    return local if local.is_file() else None


def _qualified(overrides: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Overrides keyed by (section, field): "section.field" keys, or bare field names one section has."""
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            owners.setdefault(f.name, []).append(section)
    out: dict[tuple[str, str], Any] = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            owner = SECTIONS.get(section)
            sections = [section] if owner is not None and name in {f.name for f in fields(owner)} else []
        else:
            sections = owners.get(name, [])
        if not sections:
            raise ConfigError(f"unknown setting: {key}")
        if len(sections) > 1:
            raise ConfigError(f"setting {key} is ambiguous: say {' or '.join(f'{s}.{key}' for s in sections)}")
        out[(sections[0], name)] = value
    return out


def load_settings(overrides: dict[str, Any] | None = None,
                  env: typing.Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting; ``overrides`` maps "section.field" (or an unambiguous field name) to values."""
    env = os.environ if env is None else env
    qualified = _qualified({k: v for k, v in (overrides or {}).items() if v is not None})
    toml: dict[str, Any] = {}
    path = config_path(env)
    if path is not None:
        try:
            toml = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = toml.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        bad = set(table) - {f.name for f in fields(cls)}
        if bad:
            raise ConfigError(f"{path}: unknown key(s) in [{section}]: {', '.join(sorted(bad))}")
        hints = _field_types(cls)
        values = {}
        for f in fields(cls):
            var = f.metadata["env"]
            if (section, f.name) in qualified:
                values[f.name] = _convert(qualified[(section, f.name)], hints[f.name],
                                          f"--{f.name.replace('_', '-')}")
            elif env.get(var, "") != "":
                values[f.name] = _convert(env[var], hints[f.name], var)
            elif f.name in table:
                values[f.name] = _convert(table[f.name], hints[f.name], f"{path} [{section}] {f.name}")
        try:
            built[section] = cls(**values)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return Settings(**built)


def to_env(settings: Settings) -> dict[str, str]:
    """Every setting as its environment variable: what a child process (a worker, a CLI command)
    needs to resolve exactly these settings."""
    out = {}
    for section, name, var, _default, _typ, _doc in declared():
        value = getattr(getattr(settings, section), name)
        out[var] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def with_endpoints(settings: Settings, kafka_bootstrap: str, redis_url: str) -> Settings:
    return replace(settings, stream=replace(settings.stream, kafka_bootstrap=kafka_bootstrap,
                                            redis_url=redis_url))
