"""Composition root of the capture service."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from signwatch.capture import CaptureBatcher
from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import InferenceEvent, parse_event
from signwatch.ports.bus import Message
from signwatch.runtime import Ports, open_ports

GROUP = "signwatch-capture"  # the default of Settings.capture_group


@dataclass
class CaptureHandler:
    batcher: CaptureBatcher
    registry: CollectorRegistry | None = None

    def __post_init__(self) -> None:
        registry = self.registry or CollectorRegistry()
        self.records = Counter("signwatch_capture_records_total", "Capture records written to the store",
                               registry=registry)
        self.files = Counter("signwatch_capture_files_total", "Capture files written to the store",
                             registry=registry)

    def process(self, message: Message) -> None:
        """The event's schema and meaning are checked at the edge (``parse_event``): what fails is
        poison, dead-lettered at once by the loop."""
        self.batcher.add(message, parse_event(message.value, InferenceEvent))

    def due(self) -> bool:
        return self.batcher.due()

    def flush(self) -> None:
        before = self.batcher.records_written
        keys = self.batcher.flush()
        self.records.inc(self.batcher.records_written - before)
        self.files.inc(len(keys))

    def discard(self) -> None:
        self.batcher.discard()


def build_loop(settings: Settings, ports: Ports | None = None, registry=None) -> ConsumerLoop:
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic], settings.topic_partitions)
    batcher = CaptureBatcher(
        store=ports.store,
        prefix=settings.capture_prefix,
        sampling_percentage=settings.capture_sampling_percentage,
        max_records=settings.capture_batch_records,
        max_age_s=settings.capture_flush_seconds,
        max_bytes=settings.capture_batch_bytes,
    )
    return ConsumerLoop(ports.bus, [settings.inference_topic], settings.capture_group,
                        CaptureHandler(batcher, registry),
                        registry=registry,
                        poll_timeout_ms=settings.poll_timeout_ms)
