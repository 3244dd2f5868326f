"""A server that goes away and comes back: nothing is lost, nothing is counted twice.

A Redis of the test's own (never the shared stack's, which other tests use meanwhile) is stopped for
real while inference events wait on the real Kafka topic; the monitor keeps retrying (an outage is
not poison: nothing is dead-lettered), Redis comes back, and every event is then counted exactly once.
"""

from __future__ import annotations

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from signwatch.config import Settings
from signwatch.model.core import load_spec
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.conftest import wait_until
from tests.integration.redis_server import RedisServer
from tests.unit.helpers import inference_event

pytestmark = pytest.mark.stack


def _committed(settings: Settings) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.bus_url[len("kafka://"):], group_id=settings.monitor_group,
                             enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(settings.inference_topic, p)) or 0 for p in range(3))
    finally:
        consumer.close(autocommit=False)


def test_monitor_survives_redis_going_away_and_coming_back(stack, unique, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    url = server.url
    settings = Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=url, store_url=tmp_path.as_uri(),
        inference_topic=f"outage-{unique}.inference", violations_topic=f"outage-{unique}.violations",
        endpoint=f"outage-{unique}", monitor_min_predictions=1000, monitor_min_drift=1000,  # counting only
        monitor_group=f"outage-{unique}",
    )
    events = [inference_event(class_id=i % 5, endpoint=settings.endpoint) for i in range(20)]
    bus = open_bus(settings.bus_url)
    bus.ensure_topics([settings.inference_topic], 3)
    for e in events:
        bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    bus.flush()

    ports = open_ports(settings)
    loop = build_loop(settings, load_spec(), ports=ports)  # loads the baseline, marks the windows alive
    server.stop()
    attempts = []
    process = loop.handler.process
    loop.handler.process = lambda m: (attempts.append(m.offset), process(m))[1]
    thread = loop.start_thread()
    try:
        wait_until(lambda: len(attempts) >= 3, 60, what="the monitor to try (and fail) while redis is down")
        assert not loop.handler.idle, "the events wait, uncounted"
        assert _committed(settings) == 0, "nothing is committed before it is counted"

        server.start()

        def counted():
            client = redis.Redis.from_url(url, decode_responses=True)
            total = sum(int(client.hget(k, "total") or 0)
                        for k in client.scan_iter(f"signwatch:counts:{settings.endpoint}:*"))
            return total if loop.messages.labels(loop.group, "processed")._value.get() >= 20 else None

        assert wait_until(counted, 60, interval_s=0.2, what="every event to be counted") == 20
        assert loop.messages.labels(loop.group, "dead_lettered")._value.get() == 0
        assert wait_until(lambda: _committed(settings) == 20, 30, interval_s=0.2, what="the offsets committed")
    finally:
        loop.stop()
        thread.join(30)
        ports.close()
        bus.close()
        server.stop()
