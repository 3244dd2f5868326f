"""The monitor's second consumer loop: ground-truth labels from the topic into the join.

Each message is one SageMaker ground-truth record (``events.GroundTruthRecord``), read by
``groundtruth.parse_label`` as label files are: a record that cannot be read is poison (dead-
lettered with the reason); a class the model does not have, or a record of another endpoint, is
counted and skipped. Labels are joined a batch at a time (``Monitor.labels``, one round trip) and
committed only then: the join is durable in the state store before the offsets move, and a
replay after a crash is a duplicate there, never a second count.

The loop also takes the label files dropped in the store (``label_files.LabelFiles``, polled
every ``ground_truth_poll_seconds``, between two polls): their records go to the topic, so that all three ways in
meet in one place, in order, with one rule for duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter as PromCounter

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import PoisonMessage
from signwatch.monitoring import Monitor
from signwatch.monitoring.groundtruth import MergeCounts, class_index, parse_label
from signwatch.ports.bus import EventBus, Message

GROUP_SUFFIX = "-labels"  # the label loop's consumer group: Settings.monitor_group + this
BATCH = 1000              # labels joined in one round trip
MAX_WAIT_S = 0.2          # the oldest buffered label waits at most this long
log = logging.getLogger(__name__)


def labels_counter(registry: CollectorRegistry) -> PromCounter:
    return PromCounter("signwatch_ground_truth_labels_total",
                       "Ground-truth labels taken from the topic, by outcome: matched, waiting (for its "
                       "prediction), duplicate, unknown_class, other_endpoint (poison ones are counted by the "
                       "consumer loop)", ["endpoint", "outcome"], registry=registry)


@dataclass
class LabelHandler:
    monitor_of: Callable[[], Monitor | None]
    endpoint: str
    outcomes: PromCounter
    poll_files: Callable[[], None] | None = None  # LabelFiles.poll, when label files are taken
    _batch: list[tuple[str, int]] = field(default_factory=list)
    _since: float = 0.0

    def process(self, message: Message) -> None:
        monitor = self.monitor_of()
        try:
            record = json.loads(message.value)
        except ValueError:
            raise PoisonMessage("not a JSON ground-truth record") from None
        if isinstance(record, dict) and record.get("endpoint") not in (None, self.endpoint):
            self.outcomes.labels(self.endpoint, "other_endpoint").inc()
            return
        counts = MergeCounts()
        label = parse_label(message.value, class_index(monitor.class_names), monitor.num_classes,
                            f"{message.topic}:{message.partition}:{message.offset}", counts)
        if label is None:
            if counts.unknown_class:
                self.outcomes.labels(self.endpoint, "unknown_class").inc()
                return
            raise PoisonMessage(f"not a ground-truth record: {', '.join(counts.bad) or 'unreadable'}")
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append((label.ids[0], label.class_id))

    def due(self) -> bool:
        return bool(self._batch) and (len(self._batch) >= BATCH or time.monotonic() - self._since >= MAX_WAIT_S)

    def flush(self) -> None:
        if not self._batch:
            return
        monitor = self.monitor_of()
        outcomes = Counter(monitor.add_labels(self._batch))  # the monitor's loop judges at its next tick
        for outcome, n in outcomes.items():
            self.outcomes.labels(self.endpoint, outcome).inc(n)
        self._batch = []

    def discard(self) -> None:
        self._batch = []


class LabelLoop(ConsumerLoop):
    """Joins its group only once the monitor knows the served model (its classes read labels)."""

    def __init__(self, monitor_of: Callable[[], Monitor | None], *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.monitor_of = monitor_of

    @property
    def waiting_for(self) -> str | None:
        return "the served model's classes (the monitor's loop)" if self.monitor_of() is None else None

    def run_once(self) -> int:
        if self.monitor_of() is None:
            self.progress_at = time.monotonic()  # waiting for the model is not a stall
            self.stopping.wait(min(1.0, self.poll_timeout_ms / 1000))
            return 0
        taken = super().run_once()
        if self.handler.poll_files is not None:
            self.handler.poll_files()  # new label files to the topic (at most once a poll interval)
        return taken


def build_label_loop(settings: Settings, bus: EventBus, monitor_of: Callable[[], Monitor | None],
                     registry: CollectorRegistry, poll_files: Callable[[], None] | None = None) -> LabelLoop:
    handler = LabelHandler(monitor_of, settings.endpoint, labels_counter(registry), poll_files)
    return LabelLoop(monitor_of, bus, [settings.ground_truth_topic], settings.monitor_group + GROUP_SUFFIX, handler,
                     registry=registry, poll_timeout_ms=min(settings.poll_timeout_ms, 250))
