"""Settings: declared once, resolved flags > env > TOML > default, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.settings import declared, load_settings, to_env
from tests.conftest import REPO

README = REPO / "README.md"


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
    # each row as `musicrec config --markdown` prints it: defaults and docs in step with the code
    stale = [env for _, _, env, default, _, doc in declared() if f"| `{env}` | `{default}` | {doc} |" not in text]
    assert not stale, f"README rows out of date (regenerate with musicrec config --markdown): {stale}"


def test_every_kafka_client_gets_the_same_credentials() -> None:
    from stream.kafka_config import aiokafka_options, client_config, faust_broker_options

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


def test_each_config_class_has_its_own_namespace() -> None:
    s = load_settings({"stream.batch_size": 100, "ncf.batch_size": 64, "model.seed": 3, "ncf.seed": 4}, env={})
    assert (s.stream.batch_size, s.ncf.batch_size, s.model.seed, s.ncf.seed) == (100, 64, 3, 4)
    with pytest.raises(ConfigError, match=r"ambiguous: say stream\.batch_size or ncf\.batch_size"):
        load_settings({"batch_size": 100}, env={})
    with pytest.raises(ConfigError, match=r"unknown setting: stream\.factors"):
        load_settings({"stream.factors": 8}, env={})
    with pytest.raises(ConfigError, match="ambiguous"):
        load_settings({"factors": 8}, env={})
    assert load_settings({"alpha": 2.0}, env={}).model.alpha == 2.0, "a name only one section has needs no prefix"


def test_ranges_are_declared_with_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"MUSICREC_DIVERSITY must be < 1, got 1\.0"):
        load_settings(env={"MUSICREC_DIVERSITY": "1"})
    with pytest.raises(ConfigError, match="MUSICREC_K must be <= 500"):
        load_settings(env={"MUSICREC_K": "501"})
    with pytest.raises(ConfigError, match="MUSICREC_NCF_BACKEND must be torch or mlx"):
        load_settings(env={"MUSICREC_NCF_BACKEND": "jax"})


def test_settings_travel_to_a_child_process_through_the_environment() -> None:
    s = load_settings({"stream.data_dir": "/tmp/x", "relisten": "always", "ncf.mlp_layers": "32,16"}, env={})
    assert load_settings(env=to_env(s)) == s
