"""The Kafka adapter on the real broker: ``ensure_topics`` returns only when a new topic can be
used (every partition has a leader), and a consumer says which partitions it was handed."""

from __future__ import annotations

import logging

import pytest
from kafka import KafkaAdminClient

from signwatch.ports.bus_kafka import KafkaBus
from tests.conftest import wait_until

pytestmark = pytest.mark.stack


def test_new_topics_have_a_leader_per_partition_when_ensure_topics_returns(stack, unique):
    bootstrap = stack["kafka"]["bootstrap"]
    topics = [f"ready-{unique}.{i}" for i in range(3)]
    bus = KafkaBus(bootstrap)
    bus.ensure_topics(topics, partitions=8)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-ready")
    try:
        described = {t["name"]: t for t in admin.describe_topics(topics)}  # one call, right after
        for topic in topics:
            partitions = described[topic]["partitions"]
            assert len(partitions) == 8, described[topic]
            assert all(p["error_code"] == 0 and p["leader_id"] >= 0 for p in partitions), described[topic]
        bus.ensure_topics(topics, partitions=8)  # existing topics: nothing to create, returns at once
    finally:
        admin.delete_topics(topics)
        admin.close()
        bus.close()


def test_a_consumer_logs_the_partitions_it_is_handed(stack, unique, caplog):
    bus = KafkaBus(stack["kafka"]["bootstrap"])
    topic = f"assigned-{unique}"
    bus.ensure_topics([topic], partitions=3)
    consumer = bus.consumer([topic], group=f"g-{unique}")
    caplog.set_level(logging.INFO, logger="signwatch.ports.bus_kafka")
    try:
        line = f"g-{unique}: assigned {topic}[0,1,2]"
        wait_until(lambda: consumer.poll(timeout_ms=200) == [] and line in caplog.text, 30, 0,
                   "the consumer's assignment in the log")
        consumer.poll(timeout_ms=200)
        assert caplog.text.count(line) == 1, "logged once, not on every poll"
    finally:
        consumer.close()
        bus.close()
