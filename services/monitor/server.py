"""Composition root of the monitor service: parse, ``Monitor.observe``, publish, count.

The monitor counts the served model's classes: given (``serve all`` and the demo hand over the
inference core's spec), else from ``SIGNWATCH_MODEL_PATH``'s manifest, else from the manifest the
inference service published in the store (``signwatch.model.published``). Until it is there the
loop takes no message (nothing is consumed or committed; ``/health/ready`` says what it waits
for); a published manifest is re-read every 30 s and a new model is taken without a restart.

Each violation is claimed with its outbox entry (``signwatch.monitoring.outbox``); once the bus
acknowledged it the entry is done. Between two polls the loop sweeps the outbox (at start, then
every second) and re-publishes what a dead replica, or a failed publish, left there. A baseline
learned from the endpoint's first traffic is announced the same way on the baselines topic
(``signwatch.monitoring.learning``: its own outbox, its files written by the sweep if need be).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop, is_transient
from signwatch.events import BaselineEvent, InferenceEvent, PoisonMessage, ViolationEvent, parse_event
from signwatch.model import ModelSpec
from signwatch.model.published import ModelFacts
from signwatch.monitoring import Monitor, MonitorConfig
from signwatch.monitoring.registry import INCIDENTS
from signwatch.ports.bus import EventBus, Message, MessageTooLarge, publish_and_wait
from signwatch.runtime import Ports, open_ports
from signwatch_services.monitor.metrics import MonitorMetrics
from signwatch_services.monitor.replay import replayer

GROUP = "signwatch-monitor"  # the default of Settings.monitor_group
EXIT_AFTER_CLAIM_STATUS = 70  # the exit status of the tests' fault (Settings.monitor_test_exit_after_claim)
log = logging.getLogger(__name__)


@dataclass
class MonitorHandler:
    monitor: Monitor | None  # None until the served model's facts are known (MonitorLoop builds it)
    bus: EventBus
    topic: str
    metrics: MonitorMetrics
    replay: Callable[[int], Iterator[Message]] | None = None
    _lost_checked: float = 0.0
    _last_seen: object = None

    max_wait_s: float = 0.1
    sweep_every_s: float = 1.0
    exit_after_claim: str | None = None  # tests only: Settings.monitor_test_exit_after_claim
    baselines_topic: str = "signwatch.baselines"  # Settings.baselines_topic: a learned baseline took over
    _swept: float = float("-inf")

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
                    if event.endpoint == self.monitor.config.endpoint:
                        self.monitor.admit(event)  # what was dead-lettered is not recounted
                except PoisonMessage:
                    continue
                counted += self.monitor.recount(event)
        except Exception:
            self.monitor.release_rebuild()  # the next check (this replica or another) tries again
            raise
        self.monitor.rebuilt()
        log.warning("state store lost the windows: recounted %d events from the topic", counted)

    def process(self, message: Message) -> None:
        """Checks the event at the edge (schema and meaning: ``parse_event``, then the model's facts:
        ``Monitor.admit``) and buffers it. What fails is counted as unreadable (the completeness
        check sees it) and raised as poison: the loop dead-letters it at once."""
        try:
            event = parse_event(message.value, InferenceEvent)
            if event.endpoint == self.monitor.config.endpoint:
                self.monitor.admit(event)
        except PoisonMessage:
            self._publish(self.monitor.observe_unreadable(f"{message.topic}:{message.partition}:{message.offset}",
                                                          message.timestamp_ms / 1000))
            raise
        if event.endpoint != self.monitor.config.endpoint:
            return  # another endpoint's monitor counts it
        self.metrics.observed(message)
        if not self._batch:
            self._batch_since = time.monotonic()
        self._batch.append(event)

    def _send(self, violation: ViolationEvent) -> bool:
        """Publish one claimed violation and mark its outbox entry done; False when the bus failed
        (the entry stays for a sweep: the violation is claimed, never lost)."""
        try:
            publish_and_wait(self.bus, self.topic, violation.violation_id, violation.to_bytes())
        except MessageTooLarge as exc:  # can never succeed: an error, not an outage
            self.metrics.unpublishable.inc()
            log.error("violation %s cannot be published: %s", violation.violation_id, exc)
            self.monitor.published(violation)  # no retry can deliver it
            return True
        except Exception as exc:  # noqa: BLE001 - the bus away: a sweep re-publishes it after the grace period
            log.warning("violation %s not published (%s: %s): left in the outbox", violation.violation_id,
                        type(exc).__name__, exc)
            return False
        self.monitor.published(violation)
        self.metrics.published(violation)
        log.warning("violation %s %s: %s", violation.state, violation.violation_id, violation.check.description)
        return True

    def _publish(self, violations: list[ViolationEvent]) -> None:
        for violation in violations:
            if (violation.state == "open" and self.exit_after_claim in violation.checks
                    and self.monitor.state.set_once(f"signwatch:test-fault:{self.monitor.config.endpoint}", 86_400)):
                log.critical("test fault: exiting after the claim of %s", violation.violation_id)
                os._exit(EXIT_AFTER_CLAIM_STATUS)  # once per endpoint: the replica that claims first
            if not self._send(violation):
                break  # the bus failed: the rest are in the outbox too
        if self.monitor.last is not None and self.monitor.last is not self._last_seen:
            self._last_seen = self.monitor.last
            self.metrics.evaluated(self.monitor.last)
        self._publish_baselines(self.monitor.take_baseline_events())

    def _publish_baselines(self, events: list[BaselineEvent]) -> None:
        """A learned baseline's takeover (claimed once across replicas, in the baseline outbox until
        the bus acknowledged it: a failed publish is retried by a sweep)."""
        for event in events:
            try:
                publish_and_wait(self.bus, self.baselines_topic, event.endpoint, event.to_bytes())
            except Exception as exc:  # noqa: BLE001 - the bus away: left in the outbox for a sweep
                log.warning("baseline event %s not published (%s: %s): left in the outbox", event.event_id,
                            type(exc).__name__, exc)
                return
            self.monitor.baseline_published(event)
            log.warning("baseline %s learned from %d predictions took over (event %s)", event.baseline_id,
                        event.item_count, event.event_id)

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
        except Exception as exc:
            if not is_transient(exc):
                raise  # no retry mends it: the loop retries the flush a bounded number of times, then isolates
            # A server away: the events wait in the batch, uncommitted, while the loop polls on; at
            # the bound the loop waits in flush() until the server is back (memory stays bounded).
            log.warning("monitor: counting or checking failed (%s: %s); retrying", type(exc).__name__, exc)
            return len(self._batch) >= self.max_batch
        return self.idle

    @property
    def max_batch(self) -> int:
        return 10 * self.monitor.config.check_every_events

    def discard(self) -> None:
        """Forget the events not yet counted: the loop replays them one at a time."""
        self._batch = []

    def sweep(self) -> None:
        """Re-publish every violation claimed (by any replica) and never acknowledged whose lease
        this replica can take: its claimer's ran out. At start, then every ``sweep_every_s``.
        First the open incidents go to ``signwatch_violation_open`` (every replica's)."""
        if self.monitor is None or time.monotonic() - self._swept < self.sweep_every_s:
            return
        self._swept = time.monotonic()
        outbox = self.monitor.incidents.outbox
        try:
            self.metrics.incidents_open(self.monitor.incidents.open_records(INCIDENTS))
            pending = outbox.pending()
            self.metrics.outbox_pending.set(len(pending))
            for violation in pending:
                if not outbox.take(violation):
                    continue  # its claimer may still publish it, or another replica's sweep does
                if not self._send(violation):
                    return
                self.metrics.republished.inc()
                log.warning("outbox: re-published violation %s (%s), claimed and never acknowledged",
                            violation.violation_id, violation.state)
            self._publish_baselines(self.monitor.unpublished_baseline_events())
        except Exception as exc:  # noqa: BLE001 - the state store away: the next sweep tries again
            log.warning("monitor: outbox sweep failed (%s: %s)", type(exc).__name__, exc)

    def judge_labels(self) -> None:
        """Labels joined (by the label loop) while no prediction arrives: the model-quality check
        is due all the same (``Monitor.labels_changed``). Between two polls, as the sweep."""
        if self.monitor is None or not (self.monitor.labels_changed or self.monitor.screening_changed) \
                or self._batch:
            return  # with events buffered, counting them runs the checks
        try:
            self._publish(self.monitor.tick())
        except Exception as exc:  # noqa: BLE001 - the state store away: the next poll tries again
            log.warning("monitor: judging labels failed (%s: %s)", type(exc).__name__, exc)

    @property
    def idle(self) -> bool:
        """Every event taken is counted and checked."""
        return not self._batch and (self.monitor is None or not self.monitor.pending)

    def flush(self) -> None:
        if self._batch:
            self._rebuild_if_lost(force=True)  # one GET a batch: a lost window is never added to
            batch = self._batch
            self._publish(self.monitor.observe_many(batch))
            self._batch = []


def build_monitor(settings: Settings, ports: Ports, spec: ModelSpec, clock=time.monotonic) -> Monitor:
    """The monitor of the model ``spec`` describes (its classes, labels and version)."""
    return Monitor(ports.state, ports.store, MonitorConfig.from_settings(settings), spec.class_names, clock=clock,
                   model_version=spec.version)


class MonitorLoop(ConsumerLoop):
    """The consumer loop, which first waits for the served model's facts (joining the consumer
    group only then) and takes a new model's on the loop's thread, between two polls."""

    def __init__(self, facts: ModelFacts, build: Callable[[ModelSpec], Monitor], *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.facts, self.build = facts, build
        self._generation = 0  # of the facts the monitor counts by

    @property
    def waiting_for(self) -> str | None:
        """What the loop waits for before it counts (for ``/health/ready``), or None."""
        return self.facts.waiting_for if self.handler.monitor is None else None

    def class_names(self) -> tuple[str, ...] | None:
        """The classes of the model the monitor counts (labels are read by them), or None while it
        waits for the model's facts (the monitor is built, or given a new model, on the loop's
        thread: read once per call)."""
        monitor = self.handler.monitor
        return None if monitor is None else monitor.class_names

    def run_once(self) -> int:
        spec = self.facts.poll()
        if self.handler.monitor is None:
            if spec is None:
                self.progress_at = time.monotonic()  # waiting for the model is not a stall
                self.stopping.wait(min(1.0, self.poll_timeout_ms / 1000))
                return 0
            self._adopt(self.build(spec))
        elif spec is not None and self.facts.generation != self._generation:
            self.handler.monitor.set_model(spec.class_names, spec.version)
            log.warning("monitor: now counting model %s (%d classes)", spec.version, spec.num_classes)
        self._generation = self.facts.generation
        taken = super().run_once()
        self.handler.sweep()
        self.handler.judge_labels()
        return taken

    def _adopt(self, monitor: Monitor) -> None:
        monitor.on_unreadable = self.handler.metrics.unreadable_seen
        monitor.on_folded = self.handler.metrics.folded_seen
        monitor.on_counted = self.handler.metrics.counted
        self.handler.monitor, self._generation = monitor, self.facts.generation
        log.info("monitor: counting model %s (%d classes); baseline: %s", monitor.model_version,
                 monitor.num_classes, monitor.baseline_status)


def build_loop(settings: Settings, spec: ModelSpec | None = None, ports: Ports | None = None,
               registry=None, facts: ModelFacts | None = None) -> MonitorLoop:
    """The monitor's loop. ``spec``: the served model is known (``serve all``, the demo), the
    monitor is built at once; else ``facts`` (default: SIGNWATCH_MODEL_PATH's manifest, else the
    store's), asked for on the loop's thread."""
    ports = ports or open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic, settings.violations_topic, settings.baselines_topic,
                             settings.ground_truth_topic], settings.topic_partitions)
    if facts is None and spec is not None:
        facts = ModelFacts.fixed(spec)
    elif facts is None:
        facts = ModelFacts.for_settings(settings, ports.store, MonitorConfig.from_settings(settings).model_reload_s)
    # With the facts known, at once: loads the baseline, marks the windows alive.
    monitor = build_monitor(settings, ports, spec) if spec is not None else None
    metrics = MonitorMetrics(registry, settings.endpoint, settings.dashboard_url)
    handler = MonitorHandler(monitor=None, bus=ports.bus, topic=settings.violations_topic, metrics=metrics,
                             replay=replayer(settings.bus_url, settings.inference_topic),
                             exit_after_claim=settings.monitor_test_exit_after_claim,
                             baselines_topic=settings.baselines_topic)
    loop = MonitorLoop(facts, lambda s: build_monitor(settings, ports, s), ports.bus, [settings.inference_topic],
                       settings.monitor_group, handler, registry=registry,
                       # A short poll so that a pending evaluation runs within the check interval.
                       poll_timeout_ms=min(settings.poll_timeout_ms, 250))
    if monitor is not None:
        loop._adopt(monitor)
    return loop


def build_label_loop(settings: Settings, loop: MonitorLoop, ports: Ports, registry=None):
    """The label loop beside ``loop`` (``labels.py``), or None when labels are not joined
    (``monitor_ground_truth`` false). It reads labels with the classes of ``loop``'s monitor."""
    if not settings.monitor_ground_truth:
        return None
    from signwatch_services.monitor.label_files import LabelFiles
    from signwatch_services.monitor.labels import build_label_loop as build

    def monitor_of() -> Monitor | None:
        return loop.handler.monitor

    files = LabelFiles(ports.store, ports.state, ports.bus, settings.ground_truth_prefix, settings.endpoint,
                       settings.ground_truth_topic, settings.ground_truth_retention_seconds,
                       settings.ground_truth_poll_seconds, loop.class_names)
    from prometheus_client import CollectorRegistry

    return build(settings, ports.bus, monitor_of, registry or CollectorRegistry(), files.poll)


def build_screening_loop(settings: Settings, loop: MonitorLoop, ports: Ports, registry=None):
    """The screening loop beside ``loop`` (``screening.py``): the explainer's adversarial scores
    into the screening windows of ``loop``'s monitor (check ``adversarial_share``)."""
    from prometheus_client import CollectorRegistry

    from signwatch_services.monitor.screening import build_screening_loop as build

    return build(settings, ports.bus, lambda: loop.handler.monitor, registry or CollectorRegistry())
