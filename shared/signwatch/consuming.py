"""The consumer loop every worker service runs: poll, process, make durable, then commit.

Offsets are committed only after ``handler.flush()`` returned, so a crash replays what was not
yet durable (at-least-once); handlers make replays harmless (idempotent keys, exactly-once
tokens). A message the handler rejects as poison (it checks every event for schema and meaning at
its edge, ``signwatch.events``) goes to the dead-letter topic ``<topic>.dlq`` at once; one that
keeps failing ``max_attempts`` times goes there too. Either is counted, and its DLQ copy carries
headers that say why, which consumer group refused it and where it came from (``DLQ_HEADERS``);
it never stops the stream. Transient failures (a server that went away) are retried with backoff
until it comes back.

A flush that fails ``max_attempts`` times with an error no retry mends (never an outage) is
isolated: the handler drops what it buffered (``discard``) and the uncommitted messages are
replayed one at a time, each made durable alone, so that the one that fails is dead-lettered and
the others are counted. Validation at the edge means this should never happen (nothing in an
event that passed can make counting raise), but a loop that trusts that would stop for good on
the first case it missed, which is what issue 16 found (a probability of 1e308).

Progress, for ``live()``, is a commit or a poll with nothing uncommitted: a loop that keeps
taking messages it never makes durable is stalled, whatever it does meanwhile.
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

# The headers of a dead-lettered message (its value and key are the original's, unchanged).
DLQ_REASON = "signwatch-dlq-reason"        # why it was refused, in words
DLQ_CONSUMER = "signwatch-dlq-consumer"    # the consumer group that refused it
DLQ_TOPIC = "signwatch-dlq-topic"          # where it was read: topic, partition, offset
DLQ_PARTITION = "signwatch-dlq-partition"
DLQ_OFFSET = "signwatch-dlq-offset"
DLQ_HEADERS = (DLQ_REASON, DLQ_CONSUMER, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET)
MAX_REASON_CHARS = 1000


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"

log = logging.getLogger(__name__)


# Errors that mean "a server went away": retried until it is back, never dead-lettered.
# Matched by name so that this module imports none of the client libraries.
TRANSIENT = {
    "builtins.ConnectionError", "builtins.TimeoutError",
    "signwatch.ports.bus.PublishError",
    "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError",
    # Redis full (until keys expire) or a replica during a failover: the server mends, not a retry count.
    "redis.exceptions.OutOfMemoryError", "redis.exceptions.ReadOnlyError",
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


class _Failed(Exception):
    """An action failed ``max_attempts`` times in a row with errors no retry mends."""


# Isolation dead-letters the message whose own flush fails. When this many in a row fail, the
# fault is not in the messages (a bug, a server error no retry mends): the loop stops isolating and
# stops being live, so that it is restarted and looked at, rather than dead-letter the stream.
MAX_ISOLATED_IN_A_ROW = 3


_COUNTERS: "weakref.WeakKeyDictionary[CollectorRegistry, Counter]" = weakref.WeakKeyDictionary()
_LAGS: "weakref.WeakKeyDictionary[CollectorRegistry, Gauge]" = weakref.WeakKeyDictionary()
_STALLS: "weakref.WeakKeyDictionary[CollectorRegistry, Gauge]" = weakref.WeakKeyDictionary()


def _messages_counter(registry: CollectorRegistry) -> Counter:
    """One counter per registry: several loops in one process (``serve all``) share it by label."""
    if registry not in _COUNTERS:
        _COUNTERS[registry] = Counter("signwatch_consumer_messages_total", "Messages by outcome",
                                      ["group", "outcome"], registry=registry)
    return _COUNTERS[registry]


def _lag_gauge(registry: CollectorRegistry) -> Gauge:
    if registry not in _LAGS:
        _LAGS[registry] = Gauge("signwatch_consumer_lag_messages",
                                "Messages taken or waiting but not yet counted: behind the end of the "
                                "partitions held (as of the last fetch) plus taken and not yet committed",
                                ["group"], registry=registry)
    return _LAGS[registry]


def _stall_gauge(registry: CollectorRegistry) -> Gauge:
    if registry not in _STALLS:
        _STALLS[registry] = Gauge("signwatch_consumer_stalled_seconds",
                                  "Seconds since the loop last made progress (a commit, or a poll with nothing "
                                  "waiting); at stall_s live() fails: the ConsumerStalled alert fires before",
                                  ["group"], registry=registry)
    return _STALLS[registry]


class Handler(Protocol):
    def process(self, message: Message) -> None:
        """Handle one message; raise PoisonMessage for input that can never succeed."""

    def due(self) -> bool:
        """True when buffered work should be made durable now."""

    def flush(self) -> None:
        """Make everything processed so far durable."""

    def discard(self) -> None:
        """Forget what was processed and not yet flushed: the loop replays it (optional; a
        handler without it has a failing flush retried until ``live()`` fails)."""


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
        self._dead: set[tuple[str, int, int]] = set()  # uncommitted and already dead-lettered
        self._dead_unflushed = False  # dead letters published and not yet acknowledged
        self._replaying = False  # the handler's buffer was discarded: only a replay makes it whole
        self._gave_up = False    # the last isolation found the fault not in the messages
        self._unprocessed = 0   # taken by the last poll, not yet processed
        self._behind = 0        # the broker's lag at the last look
        registry = registry or CollectorRegistry()
        self.messages = _messages_counter(registry)
        self.lag = _lag_gauge(registry).labels(group)
        self.processed = 0
        self.stall_s = stall_s
        self.progress_at = time.monotonic()  # the last commit, or poll with nothing waiting: see live()
        _stall_gauge(registry).labels(group).set_function(lambda: time.monotonic() - self.progress_at)

    # -- the lag gauge ------------------------------------------------------------------------
    def _report_lag(self) -> None:
        """``signwatch_consumer_lag_messages``: the broker's lag for the partitions held (as of the
        last fetch: no round trip, so it is cheap inside retry loops) plus what was taken and not
        yet committed. Called after each poll and commit, and at every retry while stuck."""
        lag = getattr(self._consumer, "lag", None)  # adapters that know it
        if lag is not None:
            try:
                behind = lag()
            except Exception:  # noqa: BLE001 - keep the last known value
                behind = None
            if behind is not None:
                self._behind = behind
        self.lag.set(self._behind + len(self._uncommitted) + self._unprocessed)

    def _wait(self, delay: float, sleep: bool = False) -> None:
        self._report_lag()
        time.sleep(delay) if sleep else self.stopping.wait(delay)

    # -- dead letters ---------------------------------------------------------------------------
    def _dead_letter(self, message: Message, reason: str) -> None:
        self.messages.labels(self.group, "dead_lettered").inc()
        self._dead.add((message.topic, message.partition, message.offset))
        log.error("%s: dead-lettering %s/%d@%d: %s", self.group, message.topic,
                  message.partition, message.offset, reason)
        headers = dict(message.headers) | {
            DLQ_REASON: reason[:MAX_REASON_CHARS], DLQ_CONSUMER: self.group, DLQ_TOPIC: message.topic,
            DLQ_PARTITION: str(message.partition), DLQ_OFFSET: str(message.offset)}
        try:
            self.bus.publish(dlq_topic(message.topic), message.key or "", message.value, headers=headers)
            self._dead_unflushed = True
        except Exception as exc:  # noqa: BLE001 - the count above still records it
            log.error("%s: dead-letter publish failed: %s", self.group, exc)

    # -- retries --------------------------------------------------------------------------------
    def _retrying(self, what: str, action, tries: int | None = None) -> bool:
        """Run ``action`` until it succeeds (True) or we are stopping (False). With ``tries``: at
        most that many times (False after). Without: an outage is retried until the server is
        back; ``max_attempts`` failures in a row that no retry mends raise ``_Failed``."""
        delay = self.backoff_s
        attempt = permanent = 0
        while tries is not None or not self.stopping.is_set():
            attempt += 1
            try:
                action()
                return True
            except Exception as exc:  # noqa: BLE001
                permanent = 0 if is_transient(exc) else permanent + 1
                if tries is not None and attempt >= tries:
                    return False
                if tries is None and permanent >= self.max_attempts:
                    raise _Failed(f"{what} failed {permanent} times: {type(exc).__name__}: {exc}") from exc
                log.warning("%s: %s failed (%s: %s); retrying in %.1fs", self.group, what,
                            type(exc).__name__, exc, delay)
                self._wait(delay, sleep=tries is not None)
                delay = min(delay * 2, self.max_backoff_s)
        return False

    def _process(self, message: Message) -> None:
        attempt, delay = 0, self.backoff_s
        while True:
            try:
                self.handler.process(message)
                self.messages.labels(self.group, "processed").inc()
                return
            except PoisonMessage as exc:  # refused at the edge: at once, never retried
                self._dead_letter(message, str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                if self.stopping.is_set():
                    raise _Stopped() from exc
                if not is_transient(exc):
                    attempt += 1
                    if attempt >= self.max_attempts:
                        self._dead_letter(message, f"failed {attempt} times: {type(exc).__name__}: {exc}")
                        return
                log.warning("%s: processing failed (%s: %s); retrying in %.1fs",
                            self.group, type(exc).__name__, exc, delay)
                self._wait(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _due(self) -> bool:
        """The handler's ``due``; an error in it (it may count or flush) is for ``_commit`` to meet
        in ``flush``: retried, bounded, isolated."""
        try:
            return self.handler.due()
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: due() failed (%s: %s); flushing", self.group, type(exc).__name__, exc)
            return True

    # -- making durable -------------------------------------------------------------------------
    def _flush(self, tries: int | None) -> bool:
        """``handler.flush`` and the dead letters' acknowledgement; isolates a flush that keeps
        failing (without ``tries``)."""
        try:
            if self._replaying:  # an isolation that did not finish: its messages are not in the buffer
                if not self._isolate(None):
                    return False
            elif not self._retrying("flush", self.handler.flush, tries):
                return False
        except _Failed as exc:
            if not self._isolate(exc):
                return False
        if self._dead_unflushed:  # the DLQ copies are on the broker before their offsets are committed
            if not self._retrying("dead-letter flush", self.bus.flush, tries):
                return False
            self._dead_unflushed = False
        return True

    def _isolate(self, failure: _Failed | None) -> bool:
        """Replay the uncommitted messages one at a time, each flushed alone: the one whose flush
        still fails is dead-lettered (with the reason), the rest are made durable. Handlers make
        replays harmless, so what the failed flushes did write is written again, once."""
        discard = getattr(self.handler, "discard", None)
        if discard is None:
            log.error("%s: %s; the handler cannot replay: retrying until the loop is restarted", self.group, failure)
            self.progress_at = float("-inf")  # not live: restart it rather than wait
            return False
        log.error("%s: %s; replaying %d messages one at a time", self.group,
                  failure or "an earlier isolation did not finish", len(self._uncommitted))
        discard()
        self._replaying = True
        in_a_row = 0
        # Once the fault was found not to be the messages', the replays dead-letter nothing more
        # until one goes through (the fault was mended) or the loop is restarted.
        limit = 1 if self._gave_up else MAX_ISOLATED_IN_A_ROW
        for message in self._uncommitted:
            if (message.topic, message.partition, message.offset) in self._dead:
                continue  # refused already: its copy is in the DLQ
            self._process(message)  # _Stopped goes up: everything stays uncommitted
            try:
                if not self._retrying("flush", self.handler.flush):
                    return False  # stopping
                in_a_row = 0
            except _Failed as exc:
                discard()
                in_a_row += 1
                if in_a_row >= limit:
                    log.critical("%s: %d messages in a row fail alone (%s): not their fault; no longer live",
                                 self.group, in_a_row, exc)
                    self.progress_at = float("-inf")
                    self._gave_up = True
                    return False
                self._dead_letter(message, str(exc))
        self._replaying = self._gave_up = False
        return True

    def _commit(self, tries: int | None = None) -> None:
        if not self._uncommitted:
            return
        try:
            if not self._flush(tries):
                return
            committed = self._retrying("commit", lambda: self._consumer.commit(self._uncommitted), tries)
        except _Failed as exc:  # e.g. the group rebalanced: the new owner replays them, harmlessly
            log.error("%s: %s; leaving these offsets to the next commit or owner", self.group, exc)
            committed = True
        except _Stopped:
            return
        if committed:
            self._uncommitted, self._dead = [], set()
            self.progress_at = time.monotonic()
            self._report_lag()

    def run_once(self) -> int:
        if self._consumer is None:
            self._consumer = self.bus.consumer(self.topics, self.group)
        messages = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
        if not self._uncommitted:
            self.progress_at = time.monotonic()  # idle or caught up: nothing is stuck
        self._unprocessed = len(messages)
        self._report_lag()
        try:
            for message in messages:
                if self.stopping.is_set():
                    break  # stopping: the rest of the batch stays uncommitted for the next consumer
                try:
                    self._process(message)
                except _Stopped:
                    return 0  # this message and the rest of the batch stay uncommitted
                self._uncommitted.append(message)
                self._unprocessed -= 1
                if self._due():  # a count or byte bound reached mid-batch: durable now, memory bounded
                    self._commit()
            if self._uncommitted and self._due():
                self._commit()
        finally:
            self._unprocessed = 0
            self._report_lag()
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
