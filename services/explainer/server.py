"""Composition root of the explainer service."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import ExplanationEvent, ViolationEvent, parse_event
from signwatch.explaining import Explainer
from signwatch.model import load_model
from signwatch.model.remote import resolve_model_path
from signwatch.ports.bus import EventBus, Message, publish_and_wait
from signwatch.runtime import Ports, open_ports

GROUP = "signwatch-explainer"
log = logging.getLogger(__name__)


@dataclass
class ExplainerHandler:
    explainer: Explainer
    bus: EventBus
    topic: str
    # the last few explanations, for a look in a debugger: bounded, since the service runs for months
    recent: deque[ExplanationEvent] = field(default_factory=lambda: deque(maxlen=32))

    def process(self, message: Message) -> None:
        # Schema and meaning (sample probabilities, plain names and store keys) are checked at the
        # edge: what fails is poison, dead-lettered at once by the loop.
        violation = parse_event(message.value, ViolationEvent)
        if violation.state != "open":
            return  # a resolved episode: nothing new to explain
        explanation = self.explainer.explain(violation)
        publish_and_wait(self.bus, self.topic, explanation.violation_id, explanation.to_bytes())
        log.info("explained violation %s: %s", violation.violation_id, explanation.report)
        self.recent.append(explanation)

    def due(self) -> bool:
        return True

    def flush(self) -> None:
        return None

    def discard(self) -> None:
        return None  # nothing is buffered: each violation is explained and published in process


def build_explainer(settings: Settings, ports: Ports) -> Explainer:
    model, spec = load_model(resolve_model_path(settings))
    return Explainer(model=model, spec=spec, store=ports.store, prefix=settings.explanations_prefix,
                     method=settings.explainer_method)


def build_loop(settings: Settings, ports: Ports | None = None, explainer: Explainer | None = None,
               registry=None) -> ConsumerLoop:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.violations_topic, settings.explanations_topic],
                            settings.topic_partitions)
    explainer = explainer or build_explainer(settings, ports)
    handler = ExplainerHandler(explainer, ports.bus, settings.explanations_topic)
    return ConsumerLoop(ports.bus, [settings.violations_topic], GROUP, handler, registry=registry,
                        poll_timeout_ms=settings.poll_timeout_ms)


def build_screening_loop(settings: Settings, ports: Ports, explainer: Explainer, registry=None) -> ConsumerLoop | None:
    """The second loop: an adversarial score per inference event (``screening.py``), with the
    model the explainer explains with; None when ``screening_enabled`` is off."""
    from signwatch_services.explainer.screening import build_screening_loop as build

    return build(settings, ports.bus, ports.store, explainer.model, explainer.spec, registry, state=ports.state)
