"""Ports are picked by URL scheme; their options travel in the URL's query."""

from __future__ import annotations

import pytest

from signwatch.ports import UnsupportedURL, open_bus
from signwatch.ports.bus_kafka import LINGER_MS


def test_a_kafka_url_sets_the_producers_linger_and_defaults_to_the_measured_one():
    assert open_bus("kafka://127.0.0.1:9092")._linger_ms == LINGER_MS
    assert open_bus("kafka://127.0.0.1:9092,127.0.0.1:9093?linger_ms=5")._linger_ms == 5


@pytest.mark.parametrize("url, message", [
    ("kafka://127.0.0.1:9092?linger_ms=soon", "linger_ms must be an integer from 0 to 900000"),
    ("kafka://127.0.0.1:9092?linger_ms=-5", "linger_ms must be an integer from 0 to 900000"),
    ("kafka://127.0.0.1:9092?linger_ms=900001", "linger_ms must be an integer from 0 to 900000"),
    ("kafka://", "needs host:port"),
    ("nats://127.0.0.1:4222", "must be kafka:// or memory://"),
])
def test_a_bad_bus_url_is_refused_with_the_reason(url, message):
    with pytest.raises(UnsupportedURL, match=message):
        open_bus(url)


@pytest.mark.parametrize("var, url, message", [
    ("SIGNWATCH_BUS_URL", "kafka://127.0.0.1:9092?ssl_verify=false", "ssl_verify not supported"),
    ("SIGNWATCH_BUS_URL", "kafka://127.0.0.1:9092?security_protocol=SASL_SSL", "needs sasl_mechanism"),
    ("SIGNWATCH_BUS_URL", "kafka://127.0.0.1:9092?sasl_password=hunter2", "would put a secret in the URL"),
    ("SIGNWATCH_BUS_URL", "kafka://127.0.0.1:9092?linger_ms=5&lingerms=9", "lingerms not supported"),
    ("SIGNWATCH_STORE_URL", "s3://bucket?endpoint=http://127.0.0.1:8333&sse=aws:kms", "sse not supported"),
    ("SIGNWATCH_STORE_URL", "ftp://host/path", "store URL must be s3:// or file://"),
    ("SIGNWATCH_STATE_URL", "mongodb://127.0.0.1", "state URL must be"),
])
def test_an_unknown_url_option_or_scheme_stops_the_service_at_start(monkeypatch, tmp_path, var, url, message):
    """`?security_protocol=SASL_SSL` was accepted and ignored: a connection its operator thought
    encrypted ran in plaintext. Now the command exits non-zero with the reason before it starts."""
    from typer.testing import CliRunner

    from signwatch_services.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, url)
    result = CliRunner().invoke(app, ["serve", "inference"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_password_in_a_refused_url_is_not_repeated_in_the_message():
    from signwatch.ports import check_url

    with pytest.raises(UnsupportedURL) as info:
        check_url("state", "mongodb://user:hunter2@127.0.0.1")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
