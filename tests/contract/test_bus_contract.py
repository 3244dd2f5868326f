from __future__ import annotations

from signwatch.ports.bus import publish_and_wait
from tests.conftest import wait_until


def drain(consumer, want: int, timeout_s: float = 30.0):
    got = []

    def enough():
        got.extend(consumer.poll(timeout_ms=200))
        return len(got) >= want

    wait_until(enough, timeout_s, interval_s=0, what=f"{want} messages")
    return got


def test_round_trip_keeps_key_value_and_per_key_order(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=3)
    for i in range(10):
        bus.publish(topic, f"key-{i % 2}", f"value-{i}".encode())
    bus.flush()
    consumer = bus.consumer([topic], group=f"g-{unique}")
    try:
        messages = drain(consumer, 10)
    finally:
        consumer.close()
    assert sorted(m.value for m in messages) == sorted(f"value-{i}".encode() for i in range(10))
    for key in ("key-0", "key-1"):
        same = [m for m in messages if m.key == key]
        assert len({m.partition for m in same}) == 1, "one key, one partition"
        assert [m.value for m in sorted(same, key=lambda m: m.offset)] == [
            f"value-{i}".encode() for i in range(10) if f"key-{i % 2}" == key
        ]


def test_a_new_consumer_resumes_after_the_committed_offset(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=1)
    for i in range(6):
        bus.publish(topic, "k", str(i).encode())
    bus.flush()
    first = bus.consumer([topic], group=f"g-{unique}")
    try:
        messages = drain(first, 6)
        first.commit(messages[:4])
    finally:
        first.close()
    second = bus.consumer([topic], group=f"g-{unique}")
    try:
        rest = drain(second, 2)
        assert [m.value for m in rest] == [b"4", b"5"]
        assert second.poll(timeout_ms=300) == []
    finally:
        second.close()


def test_uncommitted_messages_are_delivered_again(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=1)
    bus.publish(topic, "k", b"only")
    bus.flush()
    first = bus.consumer([topic], group=f"g-{unique}")
    try:
        assert [m.value for m in drain(first, 1)] == [b"only"]
    finally:
        first.close()  # dies before committing
    second = bus.consumer([topic], group=f"g-{unique}")
    try:
        assert [m.value for m in drain(second, 1)] == [b"only"]
    finally:
        second.close()


def test_groups_read_independently(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=2)
    publish_and_wait(bus, topic, "k", b"x")
    a, b = bus.consumer([topic], group=f"a-{unique}"), bus.consumer([topic], group=f"b-{unique}")
    try:
        got_a = drain(a, 1)
        a.commit(got_a)
        assert [m.value for m in drain(b, 1)] == [b"x"]
    finally:
        a.close()
        b.close()


def test_ensure_topics_is_idempotent_and_delivery_is_reported(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=2)
    bus.ensure_topics([topic], partitions=2)
    outcomes = []
    bus.publish(topic, "k", b"v", on_delivery=outcomes.append)
    bus.flush()
    wait_until(lambda: outcomes, 10, what="the delivery callback")
    assert outcomes == [None]
    assert bus.ping()


def test_headers_come_back_as_bytes_in_order_and_a_message_without_has_none(bus, unique):
    topic = f"contract-{unique}"
    bus.ensure_topics([topic], partitions=1)
    bus.publish(topic, "k", b"with", headers={"signwatch-dlq-reason": "top-1 probability 1e308 > 1",
                                              "raw": b"\x00\xff", "empty": ""})
    bus.publish(topic, "k", b"without")
    bus.flush()
    consumer = bus.consumer([topic], group=f"g-{unique}")
    try:
        with_, without = sorted(drain(consumer, 2), key=lambda m: m.offset)
    finally:
        consumer.close()
    assert with_.headers == (("signwatch-dlq-reason", b"top-1 probability 1e308 > 1"), ("raw", b"\x00\xff"),
                             ("empty", b""))
    assert with_.header("raw") == b"\x00\xff" and with_.header("missing") is None
    assert without.headers == () and without.value == b"without"
