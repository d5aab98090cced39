"""Nobody gets in, no secret leaks, no id reaches another key, every input has a size limit."""

from __future__ import annotations

import re
import ssl

import certifi
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from stream.kafka_config import client_config, faust_broker_options
from stream.redis_store import RedisKeys
from stream.settings import load_settings

REDIS_PASSWORD = "r3dis-SECRET-pw"
SASL_PASSWORD = "s4sl-SECRET-pw"


def sasl_settings(protocol: str = "SASL_SSL", mechanism: str = "SCRAM-SHA-512", cafile: str = ""):  # type: ignore[no-untyped-def]
    return load_settings({"kafka_bootstrap": "broker1:9093,broker2:9093", "kafka_security_protocol": protocol,
                          "kafka_sasl_mechanism": mechanism, "kafka_sasl_username": "svc-musicrec",
                          "kafka_sasl_password": SASL_PASSWORD, "kafka_ssl_cafile": cafile}, env={})


# -- Kafka security settings reach both clients ---------------------------------------------------
def test_kafka_python_gets_the_sasl_ssl_settings() -> None:
    conf = client_config(sasl_settings(cafile=certifi.where()).stream)
    assert conf == {"bootstrap_servers": ["broker1:9093", "broker2:9093"], "security_protocol": "SASL_SSL",
                    "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc-musicrec",
                    "sasl_plain_password": SASL_PASSWORD, "ssl_cafile": certifi.where()}
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):  # every key is one these clients accept
        assert set(conf) <= set(client.DEFAULT_CONFIG), client  # type: ignore[attr-defined]
    plain = client_config(sasl_settings(protocol="PLAINTEXT").stream)
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_plain_password" not in plain


@pytest.mark.parametrize("protocol, mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"),
                                                 ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SSL", "")])
def test_faust_gets_the_same_security_settings(protocol: str, mechanism: str) -> None:
    cfg = sasl_settings(protocol, mechanism, cafile=certifi.where()).stream
    opts = faust_broker_options(cfg)
    assert opts["broker"] == "kafka://broker1:9093;kafka://broker2:9093"
    app = faust.App("security-test", **opts)
    # what Faust's aiokafka driver will hand to aiokafka
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == protocol
    if protocol.startswith("SASL"):
        assert (auth["sasl_mechanism"], auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
            mechanism, "svc-musicrec", SASL_PASSWORD)
    context = auth["ssl_context"]
    if protocol.endswith("SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0, "the CA bundle was loaded"
    else:
        assert context is None
    assert SASL_PASSWORD not in repr(app.conf.broker_credentials)


# -- keys and size limits -----------------------------------------------------------------------
@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_a_user_id_addresses_only_its_own_key(a: str, b: str) -> None:
    keys = RedisKeys("ns")
    ka = keys.recs(a)
    assert re.fullmatch(r"ns:recs:[A-Za-z0-9._~@%-]*", ka), ka  # no separator, glob or tag character
    assert (ka == keys.recs(b)) == (a == b), "percent-encoding is one-to-one"
    assert ka not in (keys.popular(), keys.model_pointer(), keys.model_history(), keys.stats("w"))


@pytest.mark.parametrize("user", ["a:b", "x*", "{tag}", "../", "\n", "ns:popular", "%3A", "a b", "?[]"])
def test_key_syntax_in_ids_is_escaped(user: str) -> None:
    key = RedisKeys("ns").recs(user)
    suffix = key.removeprefix("ns:recs:")
    assert not set(suffix) & set(":*?[]{}\n /\\ ")
