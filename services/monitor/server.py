"""Composition root of the monitor service."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import InferenceEvent, ViolationEvent, parse_event
from signwatch.model import ModelSpec
from signwatch.monitoring import ClassCounter, Rules, check_counts
from signwatch.ports.bus import EventBus, Message, publish_and_wait
from signwatch.ports.state import StateStore
from signwatch.runtime import Ports, open_ports

GROUP = "signwatch-monitor"
log = logging.getLogger(__name__)


@dataclass
class MonitorHandler:
    counter: ClassCounter
    rules: Rules
    state: StateStore
    bus: EventBus
    topic: str
    endpoint: str
    variant: str
    class_names: tuple[str, ...]
    cooldown_s: int = 3600
    raised: list[ViolationEvent] = field(default_factory=list)

    def process(self, message: Message) -> None:
        event = parse_event(message.value, InferenceEvent)
        if event.endpoint != self.endpoint:
            return  # another endpoint's monitor counts it
        self.counter.record(event)
        counts = self.counter.window_counts(event.time.timestamp())
        for finding in check_counts(counts, self.rules, self.class_names):
            cooldown = (f"signwatch:cooldown:{self.endpoint}:{finding.check.feature_name}:"
                        f"{finding.class_id}")
            if not self.state.set_once(cooldown, self.cooldown_s):
                continue
            violation = ViolationEvent(
                endpoint=self.endpoint, variant=self.variant, check=finding.check,
                class_id=finding.class_id, share=round(finding.share, 6), count=finding.count,
                total=finding.total, window_seconds=self.counter.window_s,
                samples=self.counter.samples(finding.class_id),
            )
            try:
                publish_and_wait(self.bus, self.topic, violation.violation_id, violation.to_bytes())
            except Exception:
                self.state.delete(cooldown)  # so that the retry raises it again
                raise
            log.warning("violation %s: %s", violation.violation_id, finding.check.description)
            self.raised.append(violation)

    def due(self) -> bool:
        return True  # every process() is durable when it returns

    def flush(self) -> None:
        return None


def build_loop(settings: Settings, spec: ModelSpec | None = None, ports: Ports | None = None,
               registry=None) -> ConsumerLoop:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic, settings.violations_topic], settings.topic_partitions)
    spec = spec or ModelSpec()
    counter = ClassCounter(
        state=ports.state, endpoint=settings.endpoint,
        window_s=settings.monitor_window_seconds, bucket_s=settings.monitor_bucket_seconds,
        low_confidence=settings.monitor_low_confidence,
        samples_per_class=settings.monitor_samples_per_class,
    )
    handler = MonitorHandler(
        counter=counter, rules=Rules.from_settings(settings), state=ports.state, bus=ports.bus,
        topic=settings.violations_topic, endpoint=settings.endpoint, variant=settings.variant,
        class_names=spec.class_names, cooldown_s=settings.monitor_cooldown_seconds,
    )
    return ConsumerLoop(ports.bus, [settings.inference_topic], GROUP, handler, registry=registry,
                        poll_timeout_ms=settings.poll_timeout_ms)
