"""Issue 16 on the real Kafka and Redis: bad events of every kind interleaved with real ones stop
nothing (each is dead-lettered at once with its reason and the monitor's name in Kafka headers,
and counted; the real ones are counted within seconds), and the lag gauge counts the events the
monitor took but could not count while its Redis hangs (SIGSTOP, on the tests' private stack)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.consuming import DLQ_CONSUMER, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC, dlq_topic
from signwatch.model.core import load_spec
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch.stack import status
from signwatch_services.monitor.server import build_loop
from tests.conftest import wait_until
from tests.unit.helpers import bad_inference_events, inference_event

pytestmark = pytest.mark.stack
SPEC = load_spec()


def _settings(bootstrap: str, redis_url: str, store: str, name: str) -> Settings:
    return Settings(bus_url=f"kafka://{bootstrap}", state_url=redis_url, store_url=store,
                    inference_topic=f"{name}.inference", violations_topic=f"{name}.violations", endpoint=name,
                    monitor_group=name, monitor_min_predictions=100_000, monitor_min_drift=100_000)  # counting only


def _read_all(bootstrap: str, topic: str, want: int, timeout_s: float = 30) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=2 * 1024 * 1024)
    got = []
    try:
        wait_until(lambda: consumer.partitions_for_topic(topic), 30, what=f"{topic} to exist")
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)

        def enough():
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
            return len(got) >= want

        wait_until(enough, timeout_s, interval_s=0, what=f"{want} messages on {topic}")
        return got
    finally:
        consumer.close()


def _counted(loop) -> int:
    return int(loop.handler.monitor.windows.time_window(time.time() + 1).total)


def test_bad_events_are_dead_lettered_with_their_reason_while_real_ones_are_counted_within_seconds(
        stack, unique, tmp_path):
    bootstrap = stack["kafka"]["bootstrap"]
    settings = _settings(bootstrap, stack["redis"]["url"], tmp_path.as_uri(), f"edge-{unique}")
    bus = open_bus(settings.bus_url)
    bus.ensure_topics([settings.inference_topic, dlq_topic(settings.inference_topic)], 3)
    ports = open_ports(settings)
    registry = CollectorRegistry()
    loop = build_loop(settings, SPEC, ports=ports, registry=registry)
    thread = loop.start_thread()
    bad = bad_inference_events(settings.endpoint, SPEC.num_classes)
    real = [inference_event(class_id=i % 11, probability=0.95, endpoint=settings.endpoint) for i in range(200)]
    try:
        started = time.monotonic()
        # one key: one partition, every bad event between real ones, and the bad kinds over again
        names = list(bad) * 3
        for i, e in enumerate(real):
            bus.publish(settings.inference_topic, "k", e.to_bytes())
            if i % 2 and names:
                name = names.pop()
                bus.publish(settings.inference_topic, "k", bad[name], headers={"test-kind": name})
        bus.flush(60)
        wait_until(lambda: _counted(loop) == len(real), 30, 0.2, what="every real event counted")
        took = time.monotonic() - started
        assert took < 20, f"the real events were counted {took:.1f} s after the first was produced"
        refused = [n for n in list(bad) * 3 if n != "class_out_of_range"]
        dead = _read_all(bootstrap, dlq_topic(settings.inference_topic), len(refused))
        assert len(dead) == len(refused), "each refused once"
        headers = [dict(r.headers) for r in dead]
        assert sorted(h["test-kind"].decode() for h in headers) == sorted(refused), "the original's headers kept"
        for r, h in zip(dead, headers):
            kind = h["test-kind"].decode()
            assert r.value == bad[kind], kind
            assert h[DLQ_CONSUMER] == settings.monitor_group.encode(), kind
            assert h[DLQ_TOPIC] == settings.inference_topic.encode() and int(h[DLQ_OFFSET]) >= 0, kind
            assert len(h[DLQ_REASON]) > 10, kind
        reasons = {h["test-kind"].decode(): h[DLQ_REASON].decode() for h in headers}
        assert "less than or equal to 1" in reasons["top1_1e308"] and "finite" in reasons["nan"]
        assert "at least 1 item" in reasons["empty_predictions"]
        assert "at most 1000 items" in reasons["10000_predictions"]
        dead_counted = registry.get_sample_value("signwatch_consumer_messages_total",
                                                 {"group": settings.monitor_group, "outcome": "dead_lettered"})
        assert dead_counted == len(refused)
        # the completeness check sees every refused message, and the out-of-range event once (by its id)
        assert loop.handler.monitor.windows.time_window(time.time() + 1).unreadable == len(refused) + 1
        assert thread.is_alive(), "/health/live: the loop made progress"
        print(f"\n200 real events counted {took:.1f} s after the first was produced, among {3 * len(bad)} bad ones")
    finally:
        loop.stop()
        thread.join(30)
        ports.close()
        bus.close()


def test_the_lag_gauge_counts_events_taken_and_not_counted_while_redis_hangs(stack, private_stack, unique, tmp_path):
    root, _ = private_stack
    mine = status(root)
    bootstrap = stack["kafka"]["bootstrap"]
    settings = _settings(bootstrap, mine.redis.url, tmp_path.as_uri(), f"lag-{unique}")
    bus = open_bus(settings.bus_url)
    bus.ensure_topics([settings.inference_topic], 3)
    ports = open_ports(settings)
    registry = CollectorRegistry()
    loop = build_loop(settings, SPEC, ports=ports, registry=registry)
    def lag():
        return registry.get_sample_value("signwatch_consumer_lag_messages", {"group": settings.monitor_group})

    events = [inference_event(class_id=i % 11, endpoint=settings.endpoint) for i in range(300)]
    pid = mine.redis.pid
    thread = None
    try:
        # Redis hangs, then the events arrive, then the loop starts: its first fetch sees all 300
        # (taken, or behind it on the broker), whatever batches the producer made of them. (Started
        # first, a loop whose fetch got the first batch only would sit in its flush retries with
        # the broker's lag as of that fetch: the run-to-run flake this order removes.)
        os.kill(pid, signal.SIGSTOP)
        hung = time.monotonic()
        for e in events:
            bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
        bus.flush(30)
        thread = loop.start_thread()
        seen = wait_until(lambda: (lag() or 0) >= 250 and lag(), 30, 0.1, what="the gauge to count the waiting events")
        assert thread.is_alive(), "a Redis hang is no stall: the pod is not restarted for it"
        print(f"\nlag gauge {seen:.0f} {time.monotonic() - hung:.1f} s into the Redis hang")
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        wait_until(lambda: _counted(loop) == len(events), 60, 0.2, what="every event counted after the hang")
        wait_until(lambda: lag() == 0, 30, 0.2, what="the gauge back to 0")
    finally:
        loop.stop()
        if thread is not None:
            thread.join(30)
        ports.close()
        bus.close()
