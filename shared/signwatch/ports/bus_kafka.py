"""Apache Kafka adapter: confluent-kafka (librdkafka) produces, kafka-python consumes and administers.

Producer: librdkafka's own threads do the network work without the GIL. kafka-python's sender
thread, when the broker hangs (SIGSTOP), spins in Python and held the GIL so long that request p99
went from 40 ms to 4 s (issue 9). acks=all with idempotence: a message reported delivered is on
every in-sync replica and a retry never duplicates it. ``message.timeout.ms=0`` keeps retrying
until the broker is back; the caller bounds how much waits (signwatch.publishing). ``publish``
never blocks: a full client queue raises PublishError at once. ``ping`` asks the broker now.

Transport security (TLS, SASL PLAIN/SCRAM, mutual TLS) comes in a ``KafkaSecurity``, mapped to
librdkafka's names for the producer and kafka-python's for the consumers and the admin client. A
broker that turns the client away (wrong password, untrusted certificate) is not retried forever:
``ensure_topics``, which every service calls at start, raises ``ServerRefused`` saying why.

Consumers never auto-commit: the caller commits after its work is durable. A short session
timeout lets a restarted consumer take its partitions back within seconds of a crash (the
dead member is evicted when its session lapses).
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from signwatch.ports.bus import (
    DeliveryCallback, Headers, Message, MessageTooLarge, PublishError, encode_headers, next_offsets,
)
from signwatch.ports.security import KafkaSecurity, ServerRefused

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_000_000  # the broker's default message.max.bytes, minus headroom


# A crashed consumer's partitions come back after its session lapses: 10 s (the broker's minimum
# is 6 s) instead of kafka-python's 45 s, so a restarted capture resumes within 15 s.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 3_000
METADATA_MAX_AGE_MS = 5_000
# How long the producer holds events to send them together. The broker's cost is per request more
# than per byte: on the 2-core test machine the co-located broker took 0.08-0.10 cores above idle
# at 50 ms and 0.01-0.03 at 200 (500 events/s of 7 KB each), CPU the forwards then lacked.
# Monitoring works in seconds, so the delay costs nothing it needs.
LINGER_MS = 200
MAX_LINGER_MS = 900_000  # librdkafka's upper bound for linger.ms
# How long ensure_topics waits for a leader per new partition, and a new consumer for its client
# to see its topics' partitions (it subscribes anyway after that and logs a warning).
TOPIC_READY_TIMEOUT_MS = 30_000
# How long a secured bus waits at start to learn whether the brokers accept it: librdkafka reports
# a refused password or certificate within a second on loopback; a down broker is not a refusal.
ACCESS_CHECK_S = 10.0


class KafkaConsumerAdapter:
    def __init__(self, bootstrap: str, topics: list[str], group: str,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS, security: KafkaSecurity = KafkaSecurity()) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            **security.kafka_python(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"signwatch-{group}",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=min(HEARTBEAT_MS, session_timeout_ms // 3),
            # A topic created or grown just after subscribe is seen within seconds, not after the
            # default 5 minutes: on a fresh broker a consumer started with its topics' creation
            # otherwise sat idle (the dashboard test, first on a new stack, saw no count in 60 s).
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        self._group = group
        self._assigned: frozenset[TopicPartition] = frozenset()
        try:
            self._await_partitions(topics)
            self._consumer.subscribe(topics)
        except BaseException:  # the broker went away meanwhile: the caller retries with a new one
            self._consumer.close(autocommit=False)
            raise

    def _await_partitions(self, topics: list[str]) -> None:
        """Wait until this client's own metadata lists every topic's partitions (the caller subscribes).

        A member that joins its group while its metadata lacks a topic is assigned none of that
        topic's partitions ("No partition metadata for topic", kafka-python's range assignor).
        kafka-python 3.0.12 is meant to rejoin once the metadata arrives, but in two CI runs the
        consumers so handed nothing read nothing for 90 and 180 s (the capture kill -9 test, the
        monitor stack test). Joining only with the partitions known avoids that state."""
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_MS / 1000
        missing = list(topics)
        while missing and time.monotonic() < deadline:
            # partitions_for_topic asks the cluster when its cache does not know the topic
            missing = [t for t in missing if not self._consumer.partitions_for_topic(t)]
            if missing:
                time.sleep(0.2)
        if missing:
            log.warning("%s: no partitions known for %s; subscribing anyway (the group rebalances "
                        "when they appear)", self._group, ", ".join(missing))

    def _log_assignment(self) -> None:
        """One line whenever the group hands this consumer other partitions: the first thing to
        look at when a consumer reads nothing."""
        now = frozenset(self._consumer.assignment())
        if now != self._assigned:
            self._assigned = now
            by_topic: dict[str, list[int]] = {}
            for tp in sorted(now):
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            held = ", ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in by_topic.items()) or "no partitions"
            log.info("%s: assigned %s", self._group, held)

    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        self._log_assignment()
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                key = r.key.decode() if isinstance(r.key, bytes) else r.key
                headers = tuple((k, bytes(v or b"")) for k, v in (r.headers or ()))
                out.append(Message(r.topic, r.partition, r.offset, key, r.value, r.timestamp, headers))
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
    def __init__(self, bootstrap: str, max_block_ms: int = 2000, queue_max_messages: int = 100_000,
                 queue_max_kbytes: int = 128 * 1024, linger_ms: int = LINGER_MS,
                 security: KafkaSecurity = KafkaSecurity()) -> None:
        self._bootstrap = bootstrap
        self._security = security.checked()
        self.refused: str | None = None  # the last reason a broker turned the producer away
        self._linger_ms = linger_ms
        self._max_block_ms = max_block_ms
        self._queue_max_messages = queue_max_messages
        self._queue_max_kbytes = queue_max_kbytes
        self._producer = None
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def producer(self):
        # Created lazily: a service can start (and report not-ready) while Kafka is down.
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer({
                    "bootstrap.servers": self._bootstrap,
                    "client.id": "signwatch-producer",
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": self._linger_ms,
                    "message.timeout.ms": 0,  # retry until delivered; the publisher bounds the buffer
                    "message.max.bytes": MAX_MESSAGE_BYTES + 64 * 1024,
                    "queue.buffering.max.messages": self._queue_max_messages,
                    "queue.buffering.max.kbytes": self._queue_max_kbytes,
                    "partitioner": "murmur2_random",  # the Java client's (and kafka-python's) mapping
                    "reconnect.backoff.max.ms": 1000,
                    "logger": log,
                    "error_cb": self._on_error,
                    **self._security.librdkafka(),
                })
                self._closing.clear()
                self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
                self._poller.start()
            return self._producer

    def _on_error(self, error) -> None:
        """librdkafka's client-wide errors: an authentication or TLS failure is said once, plainly."""
        from confluent_kafka import KafkaError as RdKafkaError

        reason = refusal_reason(error.str())
        if reason is not None:
            if reason != self.refused:
                log.error("kafka refused the producer: %s", reason)
            self.refused = reason
        elif error.code() not in (RdKafkaError._TRANSPORT, RdKafkaError._ALL_BROKERS_DOWN):
            log.warning("kafka producer: %s", error.str())

    def check_access(self, timeout_s: float = ACCESS_CHECK_S) -> None:
        """Raise ServerRefused when the brokers turn this client away (librdkafka says why within
        a second: a SASL or TLS failure); a broker that is merely down is left to the callers' retries."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping(min(1.0, max(0.1, deadline - time.monotonic()))):
                return
            if self.refused is not None:
                raise ServerRefused(f"kafka at {self._bootstrap} ({self._security.protocol}): {self.refused}")

    def _admin(self) -> KafkaAdminClient:
        """An admin client, or ServerRefused when the brokers turn it away (never retried forever)."""
        try:
            return KafkaAdminClient(bootstrap_servers=self._bootstrap, client_id="signwatch-admin",
                                    **self._security.kafka_python())
        except Exception as exc:  # noqa: BLE001 - kafka-python's errors, reworded below when they are a refusal
            reason = refusal_reason(f"{type(exc).__name__}: {exc}", self._security)
            if reason is not None:
                raise ServerRefused(f"kafka at {self._bootstrap} ({self._security.protocol}): {reason}") from exc
            raise

    def _poll(self) -> None:
        """Serve delivery reports (they run the callbacks) until closed."""
        while not self._closing.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.1)

    def ensure_topics(self, topics: list[str], partitions: int) -> None:
        if self._security.protocol != "PLAINTEXT":
            self.check_access()  # a wrong password or CA: said now, not after kafka-python's 30 s of retries
        admin = self._admin()
        try:
            existing = set(admin.list_topics())
            # replication_factor -1: the cluster's default.replication.factor (and its
            # min.insync.replicas): three copies, two in sync on a production cluster
            # (docs/operations.md), one on the development stack's single broker.
            missing = [
                NewTopic(name=t, num_partitions=partitions, replication_factor=-1)
                for t in topics
                if t not in existing
            ]
            if missing:
                try:
                    admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another service created it first
            # The broker answers a create before every partition has a leader (KRaft propagates it
            # later); until then nobody can produce to or fetch from the new partitions.
            admin.wait_for_topics(topics, timeout_ms=TOPIC_READY_TIMEOUT_MS)
        finally:
            admin.close()

    def publish(
        self, topic: str, key: str, value: bytes, on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None:
        if len(value) > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")

        def report(err, _msg) -> None:
            if on_delivery:
                on_delivery(None if err is None else PublishError(str(err)))

        try:
            self.producer.produce(topic, value=value, key=key.encode(), on_delivery=report,
                                  headers=list(encode_headers(headers)) or None)
        except BufferError as exc:  # the client's queue is full: the caller retries later
            raise PublishError(f"producer queue full: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - KafkaException and friends
            if on_delivery:
                on_delivery(exc)
                return
            raise PublishError(str(exc)) from exc

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer is None:
            return
        left = self._producer.flush(timeout_s)
        if left:
            raise PublishError(f"{left} messages not delivered within {timeout_s}s")

    def consumer(self, topics: list[str], group: str) -> KafkaConsumerAdapter:
        return KafkaConsumerAdapter(self._bootstrap, topics, group, security=self._security)

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True when a broker answers a metadata request now (not from the client's cache)."""
        try:
            metadata = self.producer.list_topics(timeout=timeout_s)
            return bool(metadata.brokers)
        except Exception:  # noqa: BLE001 - readiness answers yes or no
            return False

    def close(self) -> None:
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(5)
            finally:
                self._closing.set()
                if self._poller is not None:
                    self._poller.join(2)
                self._producer = None


def refusal_reason(error: str, security: KafkaSecurity | None = None) -> str | None:
    """A plain reason when ``error`` is a broker turning the client away, else None."""
    text = error.lower()
    if "bad certificate" in text or "certificate required" in text:
        return f"the broker refused this client's certificate (mutual TLS: set ssl_cert_file and ssl_key_file): {error}"
    if "certificate" in text or "ssl handshake" in text or "ssl" in text and "verify" in text:
        return f"TLS handshake failed (a broker certificate not signed by the CA file, or a wrong host name?): {error}"
    if "authentication" in text or "invalid credentials" in text:
        return f"authentication failed (wrong SASL user, password or mechanism?): {error}"
    if security is not None and security.protocol != "PLAINTEXT" and "nobrokersavailable" in text:
        return (f"no broker completed a {security.protocol} handshake (an untrusted certificate, a wrong password, "
                f"or a listener of another protocol?): {error}")
    return None


def open_url(url, credentials) -> KafkaBus:
    """``kafka://host:port[,host:port][?linger_ms=N&security_protocol=SASL_SSL&sasl_mechanism=...]``;
    the query's security options override the settings' (secrets never travel in the URL)."""
    from signwatch.ports import UnsupportedURL

    parsed = url.parsed
    if not parsed.netloc:
        raise UnsupportedURL(f"kafka URL needs host:port: {url.redacted!r}")
    if "@" in parsed.netloc:
        raise UnsupportedURL("kafka URL must not carry a user or password (set SIGNWATCH_KAFKA_SASL_USERNAME and "
                             f"SIGNWATCH_KAFKA_SASL_PASSWORD or its _FILE variant): {url.redacted!r}")
    try:
        linger = int(url.query.get("linger_ms", LINGER_MS))
    except ValueError:
        linger = -1
    if not 0 <= linger <= MAX_LINGER_MS:  # refused here, not at the first event (librdkafka's range)
        raise UnsupportedURL(f"kafka URL's linger_ms must be an integer from 0 to {MAX_LINGER_MS}: {url.redacted!r}")
    return KafkaBus(bootstrap=parsed.netloc, linger_ms=linger,
                    security=credentials.kafka.with_url_options(url.query))
