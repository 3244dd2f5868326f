"""Composition root of the inference service: builds the core once, hands it to the routes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry, Histogram

from signwatch.classifier import Classifier, MicroBatcher
from signwatch.config import Settings
from signwatch.debugger import Debugger
from signwatch.model import ModelSpec, load_model
from signwatch.publishing import EventPublisher
from signwatch.runtime import Ports, open_ports


@dataclass
class InferenceCore:
    settings: Settings
    ports: Ports
    classifier: Classifier
    batcher: MicroBatcher
    publisher: EventPublisher
    registry: CollectorRegistry
    latency: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.latency = Histogram(
            "signwatch_inference_latency_seconds", "Time from request to answer",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    @property
    def spec(self) -> ModelSpec:
        return self.classifier.spec

    def close(self) -> None:
        self.publisher.close()
        debugger = getattr(self, "debugger", None)
        if debugger is not None:
            debugger.close()  # writes the recorded steps still queued
        self.ports.close()


def build_core(settings: Settings, ports: Ports | None = None) -> InferenceCore:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic], settings.topic_partitions)
    model, spec = load_model(settings.model_path)
    model = model.to(memory_format=torch.channels_last)  # see Classifier.predict
    registry = CollectorRegistry()
    # Off until switched on at run time through PUT /admin/debugger (services/inference/admin.py).
    debugger = Debugger(store=ports.store, endpoint=settings.endpoint, registry=registry)
    classifier = Classifier(model=model, spec=spec, top_k=settings.top_k, debugger=debugger)
    publisher = EventPublisher(
        bus=ports.bus, store=ports.store, topic=settings.inference_topic,
        registry=registry, inline_limit=settings.inline_input_limit_bytes,
    )
    batcher = MicroBatcher(classifier.predict, settings.max_batch_size, settings.max_batch_wait_ms)
    core = InferenceCore(settings, ports, classifier, batcher, publisher, registry)
    core.debugger = debugger
    return core


def create_app(core: InferenceCore):
    from signwatch_services.inference.routes import create_app as _create_app

    return _create_app(core)


def serve(settings: Settings) -> None:
    import uvicorn

    core = build_core(settings)
    try:
        uvicorn.run(create_app(core), host=settings.host, port=settings.port, log_level="info")
    finally:
        core.close()
