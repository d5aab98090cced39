"""Settings: declared once, resolved flags > env > TOML > default, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from index_manager.errors import ConfigError
from stream.settings import declared, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[stream]\nk = 7\nevents_topic = "from-toml"\n[model]\nalpha = 3.5\n')
    env = {"MUSICREC_CONFIG": str(toml), "MUSICREC_K": "9"}
    s = load_settings({"events_topic": "from-flag"}, env=env)
    assert s.stream.k == 9  # env beats TOML
    assert s.stream.events_topic == "from-flag"  # flag beats everything
    assert s.model.alpha == 3.5  # TOML beats default
    assert s.stream.dlq_topic == "music.events.dlq"


@pytest.mark.parametrize("env, match", [
    ({"MUSICREC_K": "ten"}, "MUSICREC_K"),
    ({"MUSICREC_K": "0"}, "positive"),
    ({"MUSICREC_RELISTEN": "maybe"}, "MUSICREC_RELISTEN"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"MUSICREC_CONFIG": "/no/such/file.toml"}, "does not exist"),
])
def test_clear_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)


def test_unknown_toml_keys_are_errors(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[stream]\nbatch = 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(env={"MUSICREC_CONFIG": str(toml)})


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [env for _, _, env, _, _, _ in declared() if f"`{env}`" not in text]
    assert not missing, f"README lacks: {missing}"


def test_every_kafka_client_gets_the_same_credentials() -> None:
    from stream.catalog_feed import aiokafka_options
    from stream.kafka_io import client_config
    from stream.worker import faust_broker_options

    cfg = load_settings(env={"KAFKA_BOOTSTRAP": "k1:9093,k2:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                             "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                             "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "pw"}).stream
    catalog, producer, faust = aiokafka_options(cfg), client_config(cfg), faust_broker_options(cfg)
    assert catalog["bootstrap_servers"] == "k1:9093,k2:9093" and faust["broker"] == "kafka://k1:9093;kafka://k2:9093"
    assert catalog["security_protocol"] == producer["security_protocol"] == "SASL_SSL"
    assert catalog["sasl_mechanism"] == producer["sasl_mechanism"] == faust["broker_credentials"].mechanism.value
    assert catalog["sasl_plain_username"] == producer["sasl_plain_username"] == "svc"
    assert catalog["sasl_plain_password"] == producer["sasl_plain_password"] == "pw"
    assert catalog["ssl_context"] is not None
    plain = aiokafka_options(load_settings(env={"KAFKA_BOOTSTRAP": "k1:9092"}).stream)
    assert plain == {"bootstrap_servers": "k1:9092", "security_protocol": "PLAINTEXT"}
