"""Every setting, declared once: type, default, environment variable and doc.

Values resolve, highest first: explicit overrides (CLI flags) > environment > TOML config file
(``MUSICREC_CONFIG`` or ``./musicrec.toml``; one table per section) > declared default. Model
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

from index_manager.errors import ConfigError
from offline.config import TrainConfig
from online_models.config import OnlineConfig, setting
from online_models.ncf import NCFConfig


@dataclass(frozen=True)
class StreamConfig:
    kafka_bootstrap: str = setting("", "KAFKA_BOOTSTRAP", "Kafka bootstrap servers (host:port,...). Empty: commands that can start an embedded broker do so.")  # type: ignore[assignment]
    redis_url: str = setting("", "REDIS_URL", "Redis URL (redis:// or rediss://, may carry user:password). Empty: embedded redis-server where allowed.")  # type: ignore[assignment]
    events_topic: str = setting("music.events", "MUSICREC_EVENTS_TOPIC", "Topic of listening events (key = user_id).")  # type: ignore[assignment]
    songs_topic: str = setting("music.songs", "MUSICREC_SONGS_TOPIC", "Topic of the song catalog (key = song_id).")  # type: ignore[assignment]
    dlq_topic: str = setting("music.events.dlq", "MUSICREC_DLQ_TOPIC", "Dead-letter topic: original bytes of refused messages, reason in headers.")  # type: ignore[assignment]
    partitions: int = setting(8, "MUSICREC_PARTITIONS", "Partitions of the events topic when this tool creates it.")  # type: ignore[assignment]
    app_id: str = setting("musicrec", "MUSICREC_APP_ID", "Faust application id = Kafka consumer group of the workers.")  # type: ignore[assignment]
    batch_size: int = setting(2000, "MUSICREC_BATCH_SIZE", "Maximum events per micro-batch in the worker.")  # type: ignore[assignment]
    batch_within: float = setting(0.02, "MUSICREC_BATCH_WITHIN", "Seconds the worker waits to fill a micro-batch (a full batch goes at once; this bounds the wait of a quiet stream).")  # type: ignore[assignment]
    fetch_max_wait: float = setting(0.01, "MUSICREC_FETCH_MAX_WAIT", "Seconds a consumer fetch may wait for data; Faust fixes 1.5 s, and a broker that waits out the whole period (the embedded Tansu does) adds up to that to every event's freshness.")  # type: ignore[assignment]
    session_timeout: float = setting(10.0, "MUSICREC_SESSION_TIMEOUT", "Kafka consumer session timeout (s); a dead worker's partitions move after this.")  # type: ignore[assignment]
    k: int = setting(20, "MUSICREC_K", "Songs stored per user in Redis.")  # type: ignore[assignment]
    redis_namespace: str = setting("musicrec", "MUSICREC_REDIS_NAMESPACE", "Prefix of every Redis key this project writes.")  # type: ignore[assignment]
    data_dir: str = setting("musicrec-data", "MUSICREC_DATA_DIR", "Directory of the event log (Parquet segments read by DuckDB) and model versions.")  # type: ignore[assignment]
    model_poll: float = setting(2.0, "MUSICREC_MODEL_POLL", "Seconds between a worker's checks for a newly published model version or A/B test.")  # type: ignore[assignment]
    kafka_security_protocol: str = setting("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")  # type: ignore[assignment]
    kafka_sasl_mechanism: str = setting("", "KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used.")  # type: ignore[assignment]
    kafka_sasl_username: str = setting("", "KAFKA_SASL_USERNAME", "SASL user name.")  # type: ignore[assignment]
    kafka_sasl_password: str = setting("", "KAFKA_SASL_PASSWORD", "SASL password (never logged).")  # type: ignore[assignment]
    kafka_ssl_cafile: str = setting("", "KAFKA_SSL_CAFILE", "CA bundle to verify the brokers' TLS certificates.")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.partitions <= 0 or self.k <= 0:
            raise ConfigError("batch_size, partitions and k must be positive")
        if self.batch_within <= 0 or self.session_timeout <= 0 or self.fetch_max_wait <= 0 or self.model_poll <= 0:
            raise ConfigError("batch_within, session_timeout and model_poll must be positive")
        if self.kafka_security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r} is not one of "
                              "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")

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


SECTIONS: dict[str, type] = {"stream": StreamConfig, "model": OnlineConfig, "train": TrainConfig, "ncf": NCFConfig}


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


def load_settings(overrides: dict[str, Any] | None = None,
                  env: typing.Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting; ``overrides`` maps field names (either section) to values."""
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    toml: dict[str, Any] = {}
    path = config_path(env)
    if path is not None:
        try:
            toml = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    known_fields = {f.name for cls in SECTIONS.values() for f in fields(cls)}
    unknown = set(overrides) - known_fields
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = toml.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        names = {f.name for f in fields(cls)}
        bad = set(table) - names
        if bad:
            raise ConfigError(f"{path}: unknown key(s) in [{section}]: {', '.join(sorted(bad))}")
        hints = _field_types(cls)
        values = {}
        for f in fields(cls):
            var = f.metadata["env"]
            if f.name in overrides:
                values[f.name] = _convert(overrides[f.name], hints[f.name], f"--{f.name.replace('_', '-')}")
            elif env.get(var, "") != "":
                values[f.name] = _convert(env[var], hints[f.name], var)
            elif f.name in table:
                values[f.name] = _convert(table[f.name], hints[f.name], f"{path} [{section}] {f.name}")
        try:
            built[section] = cls(**values)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return Settings(**built)


def with_endpoints(settings: Settings, kafka_bootstrap: str, redis_url: str) -> Settings:
    return replace(settings, stream=replace(settings.stream, kafka_bootstrap=kafka_bootstrap,
                                            redis_url=redis_url))
