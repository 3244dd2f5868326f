"""The consumer loop every worker service runs: poll, process, make durable, then commit.

Offsets are committed only after ``handler.flush()`` returned, so a crash replays what was not
yet durable (at-least-once); handlers make replays harmless (idempotent keys, exactly-once
tokens). A message the handler rejects as poison, or that keeps failing after ``max_attempts``,
goes to the dead-letter topic ``<topic>.dlq`` and is counted; it never stops the stream.
Transient failures (a server that went away) are retried with backoff until it comes back.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from signwatch.events import PoisonMessage
from signwatch.ports.bus import EventBus, Message

log = logging.getLogger(__name__)


# Errors that mean "a server went away": retried until it is back, never dead-lettered.
# Matched by name so that this module imports none of the client libraries.
TRANSIENT = {
    "builtins.ConnectionError", "builtins.TimeoutError",
    "signwatch.ports.bus.PublishError",
    "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError",
    "kafka.errors.KafkaConnectionError", "kafka.errors.KafkaTimeoutError",
    "kafka.errors.BrokerNotAvailableError",
    "botocore.exceptions.ConnectionError", "botocore.exceptions.ReadTimeoutError",
}


# Errors that no retry can mend (a message over the broker's limit), even though they derive
# from a transient one: counted as failures, then dead-lettered, never retried forever.
PERMANENT = {"signwatch.ports.bus.MessageTooLarge", "kafka.errors.MessageSizeTooLargeError"}


def _names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    if _names(exc) & PERMANENT or (exc.__cause__ is not None and _names(exc.__cause__) & PERMANENT):
        return False
    return bool(_names(exc) & TRANSIENT)


class _Stopped(Exception):
    """Stopping while a server is away: leave the message uncommitted for the next consumer."""


_COUNTERS: "weakref.WeakKeyDictionary[CollectorRegistry, Counter]" = weakref.WeakKeyDictionary()
_LAGS: "weakref.WeakKeyDictionary[CollectorRegistry, Gauge]" = weakref.WeakKeyDictionary()


def _messages_counter(registry: CollectorRegistry) -> Counter:
    """One counter per registry: several loops in one process (``serve all``) share it by label."""
    if registry not in _COUNTERS:
        _COUNTERS[registry] = Counter("signwatch_consumer_messages_total", "Messages by outcome",
                                      ["group", "outcome"], registry=registry)
    return _COUNTERS[registry]


def _lag_gauge(registry: CollectorRegistry) -> Gauge:
    if registry not in _LAGS:
        _LAGS[registry] = Gauge("signwatch_consumer_lag_messages",
                                "Messages behind the end of the partitions this consumer holds",
                                ["group"], registry=registry)
    return _LAGS[registry]


class Handler(Protocol):
    def process(self, message: Message) -> None:
        """Handle one message; raise PoisonMessage for input that can never succeed."""

    def due(self) -> bool:
        """True when buffered work should be made durable now."""

    def flush(self) -> None:
        """Make everything processed so far durable."""


class ConsumerLoop:
    def __init__(
        self,
        bus: EventBus,
        topics: list[str],
        group: str,
        handler: Handler,
        registry: CollectorRegistry | None = None,
        poll_timeout_ms: int = 500,
        max_attempts: int = 8,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        stall_s: float = 300.0,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.handler = handler
        self.poll_timeout_ms = poll_timeout_ms
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self._consumer = None
        self._uncommitted: list[Message] = []
        registry = registry or CollectorRegistry()
        self.messages = _messages_counter(registry)
        self.lag = _lag_gauge(registry).labels(group)
        self.processed = 0
        self.stall_s = stall_s
        self.progress_at = time.monotonic()  # the last poll, or message done: see live()

    def _dead_letter(self, message: Message, reason: str) -> None:
        self.messages.labels(self.group, "dead_lettered").inc()
        log.error("%s: dead-lettering %s/%d@%d: %s", self.group, message.topic,
                  message.partition, message.offset, reason)
        try:
            self.bus.publish(f"{message.topic}.dlq", message.key or "", message.value)
        except Exception as exc:  # noqa: BLE001 - the count above still records it
            log.error("%s: dead-letter publish failed: %s", self.group, exc)

    def _retrying(self, what: str, action, tries: int | None = None) -> bool:
        """Run ``action`` until it succeeds, we are stopping, or ``tries`` ran out."""
        delay = self.backoff_s
        attempt = 0
        while tries is not None or not self.stopping.is_set():
            attempt += 1
            try:
                action()
                return True
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: %s failed (%s); retrying in %.1fs", self.group, what, exc, delay)
                if tries is not None and attempt >= tries:
                    return False
                time.sleep(delay) if tries is not None else self.stopping.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
        return False

    def _process(self, message: Message) -> None:
        attempt, delay = 0, self.backoff_s
        while True:
            try:
                self.handler.process(message)
                self.messages.labels(self.group, "processed").inc()
                self.progress_at = time.monotonic()
                return
            except PoisonMessage as exc:
                self._dead_letter(message, str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                if self.stopping.is_set():
                    raise _Stopped() from exc
                if not is_transient(exc):
                    attempt += 1
                    if attempt >= self.max_attempts:
                        self._dead_letter(message, f"failed {attempt} times: {exc}")
                        return
                log.warning("%s: processing failed (%s: %s); retrying in %.1fs",
                            self.group, type(exc).__name__, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _commit(self, tries: int | None = None) -> None:
        if not self._uncommitted:
            return
        if not self._retrying("flush", self.handler.flush, tries):
            return
        if self._retrying("commit", lambda: self._consumer.commit(self._uncommitted), tries):
            self._uncommitted = []

    def run_once(self) -> int:
        if self._consumer is None:
            self._consumer = self.bus.consumer(self.topics, self.group)
        messages = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
        if not self._uncommitted:
            self.progress_at = time.monotonic()  # idle or caught up: nothing is stuck
        for message in messages:
            if self.stopping.is_set():
                break  # stopping: the rest of the batch stays uncommitted for the next consumer
            try:
                self._process(message)
            except _Stopped:
                return 0  # this message and the rest of the batch stay uncommitted
            self._uncommitted.append(message)
            if self.handler.due():  # a count or byte bound reached mid-batch: durable now, memory bounded
                self._commit()
        if self._uncommitted and self.handler.due():
            self._commit()
        lag = getattr(self._consumer, "lag", None)  # adapters that know it (Kafka)
        behind = lag() if lag is not None else None
        if behind is not None:
            self.lag.set(behind)
        self.processed += len(messages)
        return len(messages)

    def run(self) -> None:
        log.info("%s: consuming %s", self.group, ", ".join(self.topics))
        try:
            while not self.stopping.is_set():
                try:
                    self.run_once()
                except Exception as exc:  # noqa: BLE001 - e.g. the broker went away
                    log.warning("%s: poll failed (%s); retrying", self.group, exc)
                    self.stopping.wait(self.backoff_s)
            # Make the tail durable on a clean stop; a few tries only, the server may be gone
            # (then the uncommitted messages are simply replayed by the next consumer).
            self._commit(tries=3)
        finally:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    def live(self) -> bool:
        """False when the loop made no progress for ``stall_s`` (stuck retrying, or polling fails)."""
        return time.monotonic() - self.progress_at < self.stall_s

    def stop(self) -> None:
        self.stopping.set()

    def start_thread(self) -> threading.Thread:
        thread = _ConsumerThread(self)
        thread.start()
        return thread


class _ConsumerThread(threading.Thread):
    """The loop's thread; ``is_alive()`` (what /health/live asks) is also False once the loop
    stalled, so that a consumer stuck on one message is restarted rather than trusted."""

    def __init__(self, loop: ConsumerLoop) -> None:
        super().__init__(target=loop.run, name=f"consumer-{loop.group}", daemon=True)
        self.loop = loop

    def is_alive(self) -> bool:
        return super().is_alive() and self.loop.live()
