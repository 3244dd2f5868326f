"""Apache Kafka adapter (kafka-python).

The producer uses acks=all with idempotence, so a message reported delivered is on every
in-sync replica and a retry never duplicates it. ``publish`` hands the record to the client's
buffer and returns; ``max_block_ms`` bounds the wait when the buffer is full or the broker is
gone, and the delivery callback reports the outcome so the caller can count failures.
Consumers never auto-commit: the caller commits after its work is durable.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from signwatch.ports.bus import DeliveryCallback, Message, PublishError, next_offsets

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_000_000  # the broker's default message.max.bytes, minus headroom


class KafkaConsumerAdapter:
    def __init__(self, bootstrap: str, topics: list[str], group: str) -> None:
        self._consumer = KafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"signwatch-{group}",
        )

    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                key = r.key.decode() if isinstance(r.key, bytes) else r.key
                out.append(Message(r.topic, r.partition, r.offset, key, r.value, r.timestamp))
        out.sort(key=lambda m: (m.topic, m.partition, m.offset))
        return out

    def commit(self, messages: list[Message]) -> None:
        if not messages:
            return
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(off, "", -1)
            for (t, p), off in next_offsets(messages).items()
        }
        self._consumer.commit(offsets=offsets)

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions, from the last fetch's high
        watermarks (no extra round trip); None before the first fetch."""
        total, known = 0, False
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except Exception:  # noqa: BLE001 - not known yet (a rebalance): skip this partition
                continue
            if position is None:
                continue
            total, known = total + max(0, high - position), True
        return total if known else None

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaBus:
    def __init__(self, bootstrap: str, max_block_ms: int = 2000) -> None:
        self._bootstrap = bootstrap
        self._max_block_ms = max_block_ms
        self._producer: KafkaProducer | None = None

    @property
    def producer(self) -> KafkaProducer:
        # Created lazily: a service can start (and report not-ready) while Kafka is down.
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_block_ms=self._max_block_ms,
                max_request_size=MAX_MESSAGE_BYTES,
                client_id="signwatch-producer",
            )
        return self._producer

    def ensure_topics(self, topics: list[str], partitions: int) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, client_id="signwatch-admin")
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(name=t, num_partitions=partitions, replication_factor=1)
                for t in topics
                if t not in existing
            ]
            if missing:
                try:
                    admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another service created it first
        finally:
            admin.close()

    def publish(
        self, topic: str, key: str, value: bytes, on_delivery: DeliveryCallback | None = None
    ) -> None:
        if len(value) > MAX_MESSAGE_BYTES:
            raise PublishError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            future = self.producer.send(topic, key=key.encode(), value=value)
        except KafkaError as exc:
            if on_delivery:
                on_delivery(exc)
                return
            raise PublishError(str(exc)) from exc
        if on_delivery:
            future.add_callback(lambda _meta: on_delivery(None))
            future.add_errback(on_delivery)

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise PublishError(str(exc)) from exc

    def consumer(self, topics: list[str], group: str) -> KafkaConsumerAdapter:
        return KafkaConsumerAdapter(self._bootstrap, topics, group)

    def ping(self) -> bool:
        try:
            return bool(self.producer.bootstrap_connected()) or bool(
                self.producer.partitions_for("__consumer_offsets") is not None
            )
        except Exception:  # noqa: BLE001 - readiness answers yes or no
            return False

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            finally:
                self._producer = None
