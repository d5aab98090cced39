"""Every Kafka client's configuration, built here from one place: the settings' security options.

Three client libraries talk to the brokers: kafka-python (producers, topic creation, plain reads,
the lag probe), aiokafka (the catalog broadcast) and Faust (the worker). Each wants the same
bootstrap servers and security settings in its own shape; :func:`_security` reads them once.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream.errors import ConfigError
from stream.settings import Settings, StreamConfig

# What the worker's producer may send: a refused message goes to the dead-letter topic whole, and
# it may be as large as the broker let it into the events topic (Kafka's default is ~1 MB, the
# producer's 1,000,000 bytes). Larger dead letters go out truncated (``DeadLetter.truncated``).
DLQ_MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class _Security:
    protocol: str
    mechanism: str | None  # set when SASL is used
    username: str
    password: str
    cafile: str

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.cafile or None) if self.tls else None


def _security(cfg: StreamConfig) -> _Security:
    sasl = cfg.kafka_security_protocol.startswith("SASL")
    if sasl and cfg.kafka_sasl_password:
        _REDACT.secrets.add(cfg.kafka_sasl_password)
    return _Security(cfg.kafka_security_protocol, (cfg.kafka_sasl_mechanism or "PLAIN") if sasl else None,
                     cfg.kafka_sasl_username, cfg.kafka_sasl_password, cfg.kafka_ssl_cafile)


def _bootstrap(cfg: StreamConfig) -> list[str]:
    if not cfg.kafka_bootstrap:
        raise ConfigError("KAFKA_BOOTSTRAP is not set (or run `musicrec up` and export what it prints)")
    return [h.strip() for h in cfg.kafka_bootstrap.split(",")]


# -- kafka-python ---------------------------------------------------------------------------------
def client_config(cfg: StreamConfig) -> dict[str, Any]:
    """Connection settings of every kafka-python client (security passes straight through)."""
    sec = _security(cfg)
    _redact_kafka_python_logs()
    conf: dict[str, Any] = {"bootstrap_servers": _bootstrap(cfg), "security_protocol": sec.protocol}
    if sec.mechanism is not None:
        conf.update(sasl_mechanism=sec.mechanism, sasl_plain_username=sec.username, sasl_plain_password=sec.password)
    if sec.cafile:
        conf["ssl_cafile"] = sec.cafile
    return conf


def bootstrap_timeout(client: type, seconds: float) -> dict[str, Any]:
    """Bound one bootstrap attempt of a kafka-python client: it waits 30 s by default, and the option
    is named differently in 2.x and 3.x (unknown options are refused)."""
    defaults = getattr(client, "DEFAULT_CONFIG", {})
    name = "bootstrap_timeout_ms" if "bootstrap_timeout_ms" in defaults else "api_version_auto_timeout_ms"
    return {name: int(seconds * 1000)} if name in defaults else {}


# -- aiokafka -------------------------------------------------------------------------------------
def aiokafka_options(cfg: StreamConfig) -> dict[str, Any]:
    """Connection settings for a plain aiokafka client."""
    sec = _security(cfg)
    opts: dict[str, Any] = {"bootstrap_servers": cfg.kafka_bootstrap, "security_protocol": sec.protocol}
    if sec.tls:
        opts["ssl_context"] = sec.ssl_context()
    if sec.mechanism is not None:
        opts.update(sasl_mechanism=sec.mechanism, sasl_plain_username=sec.username,
                    sasl_plain_password=sec.password)
    return opts


# -- Faust ----------------------------------------------------------------------------------------
def faust_broker_options(cfg: StreamConfig) -> dict[str, Any]:
    """Broker URL and credentials for Faust."""
    import faust

    sec = _security(cfg)
    opts: dict[str, Any] = {"broker": ";".join(f"kafka://{h}" for h in _bootstrap(cfg))}
    if sec.mechanism is not None:
        opts["broker_credentials"] = faust.SASLCredentials(username=sec.username, password=sec.password,
                                                           mechanism=sec.mechanism, ssl_context=sec.ssl_context())
    elif sec.tls:
        opts["broker_credentials"] = faust.SSLCredentials(sec.ssl_context())
    return opts


def faust_app_options(settings: Settings, datadir: str = "faust") -> dict[str, Any]:
    """Everything the worker's ``faust.App`` is built with (also the bare-Faust benchmark's reference)."""
    cfg = settings.stream
    return dict(
        **faust_broker_options(cfg), value_serializer="raw", key_serializer="raw",
        store="memory://", web_enabled=False, topic_partitions=cfg.partitions,
        broker_session_timeout=cfg.session_timeout, broker_heartbeat_interval=max(cfg.session_timeout / 10, 0.5),
        broker_rebalance_timeout=cfg.session_timeout, consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4096, 2 * cfg.batch_size), producer_linger=0.005, producer_acks=-1,
        producer_max_request_size=DLQ_MAX_REQUEST_BYTES, datadir=f"{cfg.data_dir}/{datadir}",
    )


def use_fetch_max_wait(seconds: float) -> None:
    """Make Faust's consumers wait at most ``seconds`` per fetch (Faust hard-codes 1.5 s).

    Faust builds its aiokafka consumer itself, so the only hook is its consumer-thread class; the
    override is process-wide, which is what a worker process wants."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    base = faust_aiokafka.AIOKafkaConsumerThread
    create = getattr(base, "_musicrec_create", base._create_worker_consumer)

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = max(1, int(seconds * 1000))  # read by aiokafka's start()
        return consumer

    base._musicrec_create = create  # type: ignore[attr-defined]
    base._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


# -- secrets in kafka-python's logs ---------------------------------------------------------------
class _RedactSecrets(logging.Filter):
    """kafka-python logs its whole configuration at DEBUG (``KafkaAdminClient``), SASL password
    included. This filter masks secret-named entries and any registered secret value."""

    KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def _clean(self, value: Any) -> Any:
        if isinstance(value, Mapping) and any(k in value for k in self.KEYS):
            return {k: ("***" if k in self.KEYS and v else v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = self._clean(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        if self.secrets:
            try:
                text = record.getMessage()
            except (TypeError, ValueError):  # a malformed record: logging reports it itself
                return True
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, ()
        return True


_REDACT = _RedactSecrets()


def _redact_kafka_python_logs() -> None:
    """Attach the filter to every kafka-python logger (a logger's filters do not apply to its
    children's records), once kafka-python and its admin client are imported and their loggers exist."""
    import kafka.admin  # noqa: F401  # creates the loggers that log configurations

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name == "kafka" or name.startswith("kafka.")) and isinstance(logger, logging.Logger) \
                and _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
