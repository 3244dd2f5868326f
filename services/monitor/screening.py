"""The monitor's third consumer loop: the explainer's screening events into the screening windows.

Each message is one ``ScreeningEvent`` (``signwatch.screening``): one that does not parse is
poison (dead-lettered with the reason); one of another endpoint is counted and skipped. Events
are counted a batch at a time (``Monitor.add_screening``: one round trip, each event id once) and
committed only then, so a replay after a crash counts nothing twice. The monitor's own loop runs
the ``adversarial_share`` check at its next tick (``Monitor.screening_changed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter as PromCounter

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import ScreeningEvent, parse_event
from signwatch.monitoring import Monitor
from signwatch.ports.bus import EventBus, Message
from signwatch_services.monitor.labels import LabelLoop

GROUP_SUFFIX = "-screening"  # the screening loop's consumer group: Settings.monitor_group + this
BATCH = 500                  # events counted in one round trip
MAX_WAIT_S = 0.2             # the oldest buffered event waits at most this long


def screening_counter(registry: CollectorRegistry) -> PromCounter:
    return PromCounter("signwatch_monitor_screening_events_total",
                       "Screening events the monitor took, by outcome: counted, flagged (also counted), duplicate "
                       "(an event id counted before), other_endpoint", ["endpoint", "outcome"], registry=registry)


@dataclass
class ScreeningCountHandler:
    monitor_of: Callable[[], Monitor | None]
    endpoint: str
    outcomes: PromCounter
    _batch: list[ScreeningEvent] = field(default_factory=list)
    _since: float = 0.0

    def process(self, message: Message) -> None:
        event = parse_event(message.value, ScreeningEvent)  # poison at the edge
        if event.endpoint != self.endpoint:
            self.outcomes.labels(self.endpoint, "other_endpoint").inc()
            return
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(event)

    def due(self) -> bool:
        return bool(self._batch) and (len(self._batch) >= BATCH or time.monotonic() - self._since >= MAX_WAIT_S)

    def flush(self) -> None:
        if not self._batch:
            return
        new = self.monitor_of().add_screening(self._batch)
        self.outcomes.labels(self.endpoint, "counted").inc(new)
        self.outcomes.labels(self.endpoint, "duplicate").inc(len(self._batch) - new)
        self.outcomes.labels(self.endpoint, "flagged").inc(sum(e.flagged for e in self._batch))
        self._batch = []

    def discard(self) -> None:
        self._batch = []


class ScreeningCountLoop(LabelLoop):
    """Joins its group only once the monitor is built (as the label loop)."""

    def run_once(self) -> int:
        if self.monitor_of() is None:
            self.progress_at = time.monotonic()
            self.stopping.wait(min(1.0, self.poll_timeout_ms / 1000))
            return 0
        return ConsumerLoop.run_once(self)


def build_screening_loop(settings: Settings, bus: EventBus, monitor_of: Callable[[], Monitor | None],
                         registry: CollectorRegistry) -> ScreeningCountLoop:
    bus.ensure_topics([settings.screening_topic], settings.topic_partitions)
    handler = ScreeningCountHandler(monitor_of, settings.endpoint, screening_counter(registry))
    return ScreeningCountLoop(monitor_of, bus, [settings.screening_topic], settings.monitor_group + GROUP_SUFFIX,
                              handler, registry=registry, poll_timeout_ms=min(settings.poll_timeout_ms, 250))
