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


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_consumer_joins_with_its_new_topics_partitions_and_logs_them(stack, unique):
    """A consumer made right after its topics were created joins its group knowing their
    partitions: kafka-python's assignor never sees a topic without them (a member so joined was
    handed nothing and, twice in CI, read nothing for minutes), and the assignment is logged."""
    ours, assignor = logging.getLogger("signwatch.ports.bus_kafka"), logging.getLogger("kafka.coordinator.assignors")
    lines = _Lines()
    levels = ours.level, assignor.level
    for logger in (ours, assignor):
        logger.addHandler(lines)
        logger.setLevel(logging.INFO)
    bus = KafkaBus(stack["kafka"]["bootstrap"])
    topics = [f"joined-{unique}.{i}" for i in range(3)]
    try:
        bus.ensure_topics(topics, partitions=3)
        consumer = bus.consumer(topics, group=f"g-{unique}")
        try:
            def assigned() -> list[str]:
                assert consumer.poll(timeout_ms=200) == []
                return [line for line in lines.lines if ": assigned " in line]
            wait_until(assigned, 30, 0, "the consumer's assignment in the log")
            consumer.poll(timeout_ms=200)
            assert not [line for line in lines.lines if "No partition metadata" in line], lines.lines
            want = f"g-{unique}: assigned " + ", ".join(f"{t}[0,1,2]" for t in topics)
            assert assigned() == [want], "every partition at the first join, logged once"
        finally:
            consumer.close()
    finally:
        for logger, level in zip((ours, assignor), levels):
            logger.removeHandler(lines)
            logger.setLevel(level)
        bus.close()
