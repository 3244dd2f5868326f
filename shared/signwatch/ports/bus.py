"""The event-bus port: keyed messages on partitioned topics, consumer groups, manual commit.

Semantics every adapter keeps (tests/contract/test_bus_contract.py checks both):
- ``publish`` never blocks the caller for long; ``flush`` waits until all is acknowledged and
  raises ``PublishError`` if something could not be delivered.
- A consumer in a group starts at the group's committed offset (the earliest when none).
- Nothing is committed implicitly: ``commit`` is called after the work is durable, so a
  consumer that dies before committing sees the same messages again.
- Messages with the same key land on the same partition, in order.
- Headers given to ``publish`` (name -> text or bytes) come back on the ``Message`` as bytes, in
  the order given (Kafka record headers; the dead-letter topics say who refused what with them).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol


Headers = Mapping[str, str | bytes]


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = [v for k, v in self.headers if k == name]
        return found[-1] if found else None


def encode_headers(headers: Headers | None) -> tuple[tuple[str, bytes], ...]:
    """Headers as the wire carries them: (name, bytes) pairs, text in UTF-8."""
    return tuple((k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in (headers or {}).items())


class PublishError(RuntimeError):
    pass


class MessageTooLarge(PublishError):
    """A message over the broker's limit: no retry can ever deliver it (not an outage)."""


# The client's own errors for a record the broker will never take, matched by name.
_TOO_LARGE = {"MessageSizeTooLargeError", "RecordTooLargeError"}


DeliveryCallback = Callable[[Exception | None], None]


class Consumer(Protocol):
    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Message]: ...

    def commit(self, messages: list[Message]) -> None:
        """Commit the offsets just after the highest message of each partition given."""

    def close(self) -> None: ...


class EventBus(Protocol):
    def ensure_topics(self, topics: list[str], partitions: int) -> None: ...

    def publish(
        self, topic: str, key: str, value: bytes, on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None: ...

    def flush(self, timeout_s: float = 10.0) -> None: ...

    def consumer(self, topics: list[str], group: str) -> Consumer: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def partition_for(key: str | None, partitions: int) -> int:
    """A stable key -> partition mapping for the in-memory bus (Kafka uses murmur2)."""
    if key is None:
        return 0
    return zlib.crc32(key.encode()) % partitions


def next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
    """The offsets to commit: one past the highest message of each (topic, partition)."""
    out: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        out[tp] = max(out.get(tp, 0), m.offset + 1)
    return out


def publish_and_wait(bus: "EventBus", topic: str, key: str, value: bytes, timeout_s: float = 10.0) -> None:
    """Publish one message and return only once the bus acknowledged it (or raise)."""
    outcome: list[Exception | None] = []
    bus.publish(topic, key, value, on_delivery=outcome.append)
    bus.flush(timeout_s)
    if not outcome:
        raise PublishError(f"no acknowledgement for {topic}/{key} within {timeout_s}s")
    if outcome[0] is not None:
        err = outcome[0]
        too_large = isinstance(err, MessageTooLarge) or any(n in f"{type(err).__name__} {err}" for n in _TOO_LARGE)
        error = MessageTooLarge if too_large else PublishError
        raise error(f"{topic}/{key} not delivered: {err}") from err


def publish_all(bus: EventBus, topic: str, messages: list[tuple[str, bytes]],
                timeout_s: float = 10.0) -> tuple[int, str | None]:
    """Publish every message, then wait once for the bus: ``(acknowledged, error or None)``.
    One flush for the batch, not one per message (``publish_and_wait``'s way), so that 10,000
    messages (POST /ground-truth's labels) cost one round of the producer's batching, not 10,000."""
    outcomes: list[Exception | None] = [None] * len(messages)
    acked = [False] * len(messages)

    def on_delivery(i: int):
        def report(err: Exception | None) -> None:  # on the producer's thread, for Kafka
            outcomes[i], acked[i] = err, True
        return report

    error = None
    try:
        for i, (key, value) in enumerate(messages):
            bus.publish(topic, key, value, on_delivery=on_delivery(i))
        bus.flush(timeout_s)
    except PublishError as exc:  # a full client queue, or not all delivered within timeout_s
        error = str(exc)
    delivered = sum(1 for ok, err in zip(acked, outcomes) if ok and err is None)
    if error is None and delivered < len(messages):
        failed = next((err for ok, err in zip(acked, outcomes) if ok and err is not None), None)
        error = str(failed) if failed else f"{len(messages) - delivered} messages not acknowledged within {timeout_s}s"
    return delivered, error
