"""A server that goes away and comes back: nothing is lost, nothing is counted twice.

Redis is shut down for real while inference events wait on the real Kafka topic; the monitor keeps
retrying (an outage is not poison: nothing is dead-lettered), `signwatch stack up` brings Redis
back, and every event is then counted exactly once.
"""

from __future__ import annotations

import pytest
import redis

from signwatch.config import Settings
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch.stack import up
from signwatch_services.monitor.server import build_loop
from tests.conftest import PROJECT, wait_until
from tests.unit.helpers import inference_event

pytestmark = pytest.mark.stack


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_monitor_survives_redis_going_away_and_coming_back(stack, unique, tmp_path):
    url = stack["redis"]["url"]
    settings = Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=url, store_url=tmp_path.as_uri(),
        inference_topic=f"outage-{unique}.inference", violations_topic=f"outage-{unique}.violations",
        endpoint=f"outage-{unique}", monitor_min_predictions=1000,  # counting only, no violations
    )
    events = [inference_event(class_id=i % 5, endpoint=settings.endpoint) for i in range(20)]
    bus = open_bus(settings.bus_url)
    bus.ensure_topics([settings.inference_topic], 3)
    for e in events:
        bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    bus.flush()

    try:
        redis.Redis.from_url(url).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    wait_until(lambda: not _ping(url), 10, what="redis to go away")

    ports = open_ports(settings)
    loop = build_loop(settings, ports=ports)
    attempts = []
    record = loop.handler.counter.record
    loop.handler.counter.record = lambda e: (attempts.append(e.event_id), record(e))[1]
    thread = loop.start_thread()
    try:
        wait_until(lambda: len(attempts) >= 3, 60, what="the monitor to try (and fail) while redis is down")
        assert loop.messages.labels(loop.group, "processed")._value.get() == 0

        up(PROJECT, echo=lambda *_: None)  # brings back only what is down: redis
        wait_until(lambda: _ping(url), 30, what="redis to come back")

        def counted():
            client = redis.Redis.from_url(url, decode_responses=True)
            total = sum(int(client.hget(k, "total") or 0)
                        for k in client.scan_iter(f"signwatch:counts:{settings.endpoint}:*"))
            return total if loop.messages.labels(loop.group, "processed")._value.get() >= 20 else None

        assert wait_until(counted, 60, interval_s=0.2, what="every event to be counted") == 20
        assert loop.messages.labels(loop.group, "dead_lettered")._value.get() == 0
    finally:
        loop.stop()
        thread.join(30)
        ports.close()
        bus.close()
