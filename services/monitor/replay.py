"""Rebuilding the windows from the topic after the state store lost them (a Redis restart
without persistence): seek every partition back to the start of the time window by timestamp
and count what is there again. Counting is exactly-once per event id, so events the live
consumer counts meanwhile are not counted twice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from signwatch.ports.bus import Message

log = logging.getLogger(__name__)


def kafka_since(bus_url: str, topic: str, since_ms: int, max_messages: int = 1_000_000) -> Iterator[Message]:
    """Every message of ``topic`` with a timestamp >= ``since_ms``, up to the end offsets now."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=urlparse(bus_url).netloc, enable_auto_commit=False,
                             group_id=None, client_id="signwatch-monitor-rebuild")
    try:
        deadline = time.monotonic() + 15
        known = consumer.partitions_for_topic(topic)
        while not known and time.monotonic() < deadline:  # a fresh client has no metadata yet
            time.sleep(0.1)
            known = consumer.partitions_for_topic(topic)
        if not known:
            raise TimeoutError(f"no partitions known for {topic}: cannot rebuild the windows")
        parts = [TopicPartition(topic, p) for p in sorted(known)]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        starts = consumer.offsets_for_times({tp: since_ms for tp in parts})
        todo = {}
        for tp in parts:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                todo[tp] = ends[tp]
        seen = 0
        deadline = time.monotonic() + 120
        while todo and seen < max_messages and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=1000).items():
                for r in records:
                    if tp in todo and r.offset < todo[tp]:
                        seen += 1
                        key = r.key.decode() if isinstance(r.key, bytes) else r.key
                        yield Message(r.topic, r.partition, r.offset, key, r.value, r.timestamp)
                if tp in todo and consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        consumer.close()


def replayer(bus_url: str | None, topic: str) -> Callable[[int], Iterator[Message]] | None:
    if bus_url and bus_url.startswith("kafka://"):
        return lambda since_ms: kafka_since(bus_url, topic, since_ms)
    return None  # the in-memory bus lives and dies with the in-memory state
