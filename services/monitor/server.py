"""Composition root of the monitor service: parse, ``Monitor.observe``, publish, count."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import InferenceEvent, PoisonMessage, ViolationEvent, parse_event
from signwatch.model import ModelSpec
from signwatch.monitoring import Monitor, MonitorConfig
from signwatch.ports.bus import EventBus, Message, MessageTooLarge, publish_and_wait
from signwatch.runtime import Ports, open_ports
from signwatch_services.monitor.metrics import MonitorMetrics
from signwatch_services.monitor.replay import replayer

GROUP = "signwatch-monitor"  # the default of Settings.monitor_group
log = logging.getLogger(__name__)


@dataclass
class MonitorHandler:
    monitor: Monitor
    bus: EventBus
    topic: str
    metrics: MonitorMetrics
    replay: Callable[[int], Iterator[Message]] | None = None
    _lost_checked: float = 0.0
    _last_seen: object = None

    max_wait_s: float = 0.1

    def __post_init__(self) -> None:
        self._batch: list[InferenceEvent] = []  # events counted together, a slice at a time
        self._batch_since = 0.0

    def _rebuild_if_lost(self, force: bool = False) -> None:
        """Before each batch is counted (and once a second): did the state store lose the windows?
        Then one replica recounts them from the topic."""
        if self.replay is None or (not force and time.monotonic() - self._lost_checked < 1.0):
            return
        self._lost_checked = time.monotonic()
        if not self.monitor.windows.lost() or not self.monitor.claim_rebuild():
            return
        since_ms = int((time.time() - self.monitor.config.window_s - self.monitor.config.bucket_s) * 1000)
        counted = 0
        try:
            for m in self.replay(since_ms):
                try:
                    event = parse_event(m.value, InferenceEvent)
                except PoisonMessage:
                    continue
                counted += self.monitor.recount(event)
        except Exception:
            self.monitor.release_rebuild()  # the next check (this replica or another) tries again
            raise
        self.monitor.rebuilt()
        log.warning("state store lost the windows: recounted %d events from the topic", counted)

    def process(self, message: Message) -> None:
        try:
            event = parse_event(message.value, InferenceEvent)
        except PoisonMessage:
            self._publish(self.monitor.observe_unreadable(f"{message.topic}:{message.partition}:{message.offset}",
                                                          message.timestamp_ms / 1000))
            raise
        if event.endpoint != self.monitor.config.endpoint:
            return  # another endpoint's monitor counts it
        if len(self._batch) >= 10 * self.monitor.config.check_every_events:
            self.flush()  # bounded memory: with the state store away this raises, and the loop waits
        self.metrics.observed(event, message)
        if not self._batch:
            self._batch_since = time.monotonic()
        self._batch.append(event)

    def _publish(self, violations: list[ViolationEvent]) -> None:
        for violation in violations:
            try:
                publish_and_wait(self.bus, self.topic, violation.violation_id, violation.to_bytes())
            except MessageTooLarge as exc:  # can never succeed: an error, not an outage
                self.metrics.unpublishable.inc()
                log.error("violation %s cannot be published: %s", violation.violation_id, exc)
                continue
            except Exception:
                self.monitor.release(violation)  # so that the retry raises it again
                raise
            self.metrics.published(violation)
            log.warning("violation %s %s: %s", violation.state, violation.violation_id, violation.check.description)
        if self.monitor.last is not None and self.monitor.last is not self._last_seen:
            self._last_seen = self.monitor.last
            self.metrics.evaluated(self.monitor.last)

    def due(self) -> bool:
        """Counts the buffered events in one round trip once ``check_every_events`` wait or the
        oldest waited ``max_wait_s``, runs the checks when due, and lets the loop commit once
        nothing waits (a pending evaluation runs on a later poll, within the check interval)."""
        try:
            self._rebuild_if_lost()
            if self._batch and (len(self._batch) >= self.monitor.config.check_every_events
                                or time.monotonic() - self._batch_since >= self.max_wait_s):
                self.flush()
            self._publish(self.monitor.tick())
        except Exception as exc:  # noqa: BLE001 - a server away: the events wait in the batch, uncommitted
            log.warning("monitor: counting or checking failed (%s: %s); retrying", type(exc).__name__, exc)
            return False
        return self.idle

    @property
    def idle(self) -> bool:
        """Every event taken is counted and checked."""
        return not self._batch and not self.monitor.pending

    def flush(self) -> None:
        if self._batch:
            self._rebuild_if_lost(force=True)  # one GET a batch: a lost window is never added to
            batch = self._batch
            self._publish(self.monitor.observe_many(batch))
            self._batch = []


def build_monitor(settings: Settings, ports: Ports, spec: ModelSpec | None = None, clock=time.monotonic) -> Monitor:
    spec = spec or ModelSpec()
    return Monitor(ports.state, ports.store, MonitorConfig.from_settings(settings), spec.class_names, clock=clock,
                   model_version=spec.version)


def build_loop(settings: Settings, spec: ModelSpec | None = None, ports: Ports | None = None,
               registry=None, monitor: Monitor | None = None) -> ConsumerLoop:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic, settings.violations_topic], settings.topic_partitions)
    monitor = monitor or build_monitor(settings, ports, spec)
    metrics = MonitorMetrics(registry, settings.endpoint)
    handler = MonitorHandler(monitor=monitor, bus=ports.bus, topic=settings.violations_topic, metrics=metrics,
                             replay=replayer(settings.bus_url, settings.inference_topic))
    # A short poll so that a pending evaluation runs within the check interval.
    return ConsumerLoop(ports.bus, [settings.inference_topic], settings.monitor_group, handler, registry=registry,
                        poll_timeout_ms=min(settings.poll_timeout_ms, 250))
