"""Composition root of the inference service: builds the core once, hands it to the routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry

from signwatch.classifier import Classifier, MicroBatcher
from signwatch.config import Settings
from signwatch.debugger import Debugger
from signwatch.model import ModelSpec, load_model
from signwatch.model.frozen import served_forward
from signwatch.model.published import publish_when_possible
from signwatch.model.remote import resolve_model_path
from signwatch.publishing import EventPublisher
from signwatch.runtime import Ports, open_ports
from signwatch.serving import InferenceService
from signwatch.serving.screening import InlineScreening

log = logging.getLogger(__name__)


@dataclass
class InferenceCore:
    settings: Settings
    ports: Ports
    classifier: Classifier
    batcher: MicroBatcher
    publisher: EventPublisher | None  # None when events are off (SIGNWATCH_PUBLISH_EVENTS=false)
    registry: CollectorRegistry
    service: InferenceService

    @property
    def spec(self) -> ModelSpec:
        return self.classifier.spec

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.service.close()
        debugger = getattr(self, "debugger", None)
        if debugger is not None:
            debugger.close()  # writes the recorded steps still queued
        self.ports.close()


def served_top_k(top_k: int, num_classes: int) -> int:
    """The answers' k: the setting, at most the served model's class count (known only once loaded)."""
    if top_k > num_classes:
        log.warning("SIGNWATCH_TOP_K=%d but the model has %d classes: answering the top %d",
                    top_k, num_classes, num_classes)
        return num_classes
    return top_k


def in_inference_screening(settings: Settings, ports: Ports, classifier: Classifier,
                           registry: CollectorRegistry) -> InlineScreening | None:
    """Screening in the inference batch when ``screening_in_inference`` is on, with the calibration
    the explainer would find (``baselines/{endpoint}/screening.json``, else the shipped one when it
    fits the served model); none: ``ScreeningUnavailable``, and the service does not start."""
    if not settings.screening_in_inference:
        return None
    from signwatch.monitoring.baseline import store_prefix

    prefix = settings.monitor_baseline_prefix or store_prefix(settings.endpoint)
    screening = InlineScreening.for_model(classifier, ports.store, prefix, registry)
    log.info("screening every image in the inference batch (SIGNWATCH_SCREENING_IN_INFERENCE): %s over %s, "
             "threshold %.4g for %.3g false positives, calibration %s", screening.calibration.signal,
             ",".join(screening.calibration.squeezers), screening.calibration.threshold,
             screening.calibration.fpr, screening.stored.where)
    return screening


def build_core(settings: Settings, ports: Ports | None = None) -> InferenceCore:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic], settings.topic_partitions)
    model, spec = load_model(resolve_model_path(settings))
    publish_when_possible(ports.store, settings.endpoint, spec)  # for the monitor, jobs and dashboards
    model = model.to(memory_format=torch.channels_last)  # see Classifier.predict
    registry = CollectorRegistry()
    # Off until switched on at run time through PUT /admin/debugger (services/inference/admin.py).
    debugger = Debugger(store=ports.store, endpoint=settings.endpoint, registry=registry,
                        worker=settings.debugger_worker, model=model)  # model: its default include regex
    forward = served_forward(model, spec, settings.forward_graph)  # None: eager (logged when frozen fails)
    classifier = Classifier(model=model, spec=spec, top_k=served_top_k(settings.top_k, spec.num_classes),
                            debugger=debugger, forward=forward)
    publisher = EventPublisher(
        bus=ports.bus, store=ports.store, topic=settings.inference_topic, registry=registry,
        max_events=settings.event_buffer_events, max_bytes=settings.event_buffer_bytes,
    ) if settings.publish_events else None
    screening = in_inference_screening(settings, ports, classifier, registry)
    service = InferenceService(settings, classifier, publisher, registry, screening)
    core = InferenceCore(settings, ports, classifier, service.batcher, publisher, registry, service)
    core.debugger = debugger
    return core


def create_app(core: InferenceCore):
    from signwatch_services.inference.routes import create_app as _create_app

    return _create_app(core)

