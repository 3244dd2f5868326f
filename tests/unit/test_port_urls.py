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
