"""The explainer's second consumer loop: an adversarial score for each inference event.

It reads ``signwatch.inference`` in its own consumer group (``Settings.screening_group``), off the
serving path: all events, or the share ``screening_sample_rate`` picks by event id (the same on
every replica). Each taken event's image is decoded (inline, or behind its claim check) and
resized to the model's input at once, so a buffered batch holds small tensors, not requests.
A batch is screened in one forward of the served model and its squeezed copies
(``signwatch.screening.Screener``) and one ``ScreeningEvent`` per event goes to
``signwatch.screening``; the loop commits only after the bus acknowledged all of them
(``flush``), so a crash replays the batch (the monitor counts each event id once).
Each flagged event is then listed for the dashboard, the newest first, with its triptych within
a per-minute budget (``flagged.py``), before the commit: a replay lists nothing twice.

Thresholds come from data: the calibration stored with the baseline (``screening.json``,
``signwatch.screening.stored``), re-read every ``monitor_baseline_reload_seconds``. Without one
made for the served model nothing is screened: each event is counted as ``no_calibration`` and
the reason logged once a minute (a user's model is not GTSRB: no rendered reference stands in).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Histogram

from signwatch.capture import should_sample
from signwatch.config import Settings
from signwatch.consuming import ConsumerLoop
from signwatch.events import InferenceEvent, PoisonMessage, ScreeningEvent, parse_event
from signwatch.imaging import ImageError, decode_image
from signwatch.model import ModelSpec
from signwatch.ports.bus import EventBus, Message, publish_all
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore
from signwatch.publishing import resolve_input
from signwatch.screening import Screener
from signwatch.screening import stored
from signwatch.screening.stored import StoredCalibration
from signwatch.screening.triptych import TriptychWriter
from signwatch_services.explainer.flagged import ExplainBudget, FlaggedRecorder

MAX_WAIT_S = 0.2   # the oldest buffered event waits at most this long for its batch
LOG_EVERY_S = 60.0
log = logging.getLogger(__name__)


@dataclass
class ScreeningMetrics:
    events: Counter
    seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "ScreeningMetrics":
        return cls(
            Counter("signwatch_screening_events_total",
                    "Inference events the explainer's screening loop took, by outcome: screened, sampled_out "
                    "(screening_sample_rate), no_calibration (none stored for the served model), other_endpoint, "
                    "screened_in_inference (the inference service screened it: published as is); "
                    "flagged ones are also counted as flagged, and once listed on the dashboard as triptych (with "
                    "their images) or listed (without: over screening_explain_max_per_minute, or not drawn)",
                    ["endpoint", "outcome"], registry=registry),
            Histogram("signwatch_screening_batch_seconds", "Seconds to screen one batch (the forward of the batch "
                      "and its squeezed copies)", ["endpoint"], registry=registry,
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)))


class CalibrationKeeper:
    """The stored calibration for the served model, re-read every ``reload_s``."""

    def __init__(self, store: ObjectStore, prefix: str, model_version: str, reload_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.prefix, self.model_version, self.reload_s, self.clock = \
            store, prefix, model_version, reload_s, clock
        self.current: StoredCalibration | None = None
        self.status = ""
        self._read_at = float("-inf")

    def get(self) -> StoredCalibration | None:
        if self.clock() - self._read_at >= self.reload_s:
            self._read_at = self.clock()
            current, status = stored.load(self.store, self.prefix, self.model_version)
            if status != self.status:
                (log.info if current is not None else log.warning)("screening: %s", status)
            self.current, self.status = current, status
        return self.current


@dataclass
class _Taken:
    event: InferenceEvent
    pixels: torch.Tensor | None  # (3, size, size) in [0, 1]; None: screened in inference, not drawn


def _from_inference(event: InferenceEvent) -> ScreeningEvent:
    """The screening event of an inference event the inference service screened in its batch."""
    top = event.output.predictions[0]
    return ScreeningEvent(**event.screening.model_dump(), event_id=event.event_id, inference_time=event.time,
                          endpoint=event.endpoint, variant=event.variant, model_version=event.model_version,
                          predicted_class=top.class_id, probability=top.probability)


@dataclass
class ScreeningHandler:
    screener: Screener
    calibrations: CalibrationKeeper
    store: ObjectStore
    bus: EventBus
    topic: str
    endpoint: str
    metrics: ScreeningMetrics
    sample_rate: float = 1.0
    batch_size: int = 64
    max_image_side: int = 4096
    flagged: FlaggedRecorder | None = None  # lists flagged events for the dashboard; None: not listed
    _batch: list[_Taken] = field(default_factory=list)
    _since: float = 0.0
    _logged: float = float("-inf")

    def _count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.metrics.events.labels(self.endpoint, outcome).inc(n)

    def process(self, message: Message) -> None:
        event = parse_event(message.value, InferenceEvent)  # poison at the edge, dead-lettered
        if event.endpoint != self.endpoint:
            return self._count("other_endpoint")
        if event.screening is not None:
            # Screened in the inference batch (SIGNWATCH_SCREENING_IN_INFERENCE): its score is the one
            # the client got, published as is, with no forward here and no sampling (it costs nothing).
            # Only a flagged one is decoded, so that its triptych can be drawn for the dashboard.
            drawn = event.screening.flagged and self.flagged is not None and self.calibrations.get() is not None
            pixels = self._pixels(event) if drawn else None  # the squeezed copy needs the calibration's squeezers
            self._take(_Taken(event, pixels))
            return None
        if not should_sample(event.event_id, self.sample_rate * 100):
            return self._count("sampled_out")
        if self.calibrations.get() is None:
            self._count("no_calibration")
            if time.monotonic() - self._logged >= LOG_EVERY_S:
                self._logged = time.monotonic()
                log.warning("screening: not screening (%s); logged at most once a minute", self.calibrations.status)
            return None
        self._take(_Taken(event, self._pixels(event)))

    def _pixels(self, event: InferenceEvent) -> torch.Tensor:
        raw = resolve_input(event.input, self.store)  # a store away: retried by the loop
        try:
            image = decode_image(raw, event.input.content_type, self.max_image_side)
        except (ImageError, ValueError) as exc:  # the inference decoded it; this copy cannot be
            raise PoisonMessage(f"input of {event.event_id} cannot be decoded: {exc}") from None
        return self.screener.unit([image])[0]

    def _take(self, taken: _Taken) -> None:
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(taken)

    def due(self) -> bool:
        return bool(self._batch) and (len(self._batch) >= self.batch_size
                                      or time.monotonic() - self._since >= MAX_WAIT_S)

    def flush(self) -> None:
        """Screen the batch and publish one event each; returns once the bus acknowledged all."""
        if not self._batch:
            return
        pre = [t for t in self._batch if t.event.screening is not None]
        taken = [t for t in self._batch if t.event.screening is None]
        current = self.calibrations.current
        if current is None and taken:  # the calibration went away since these were taken: screened with none
            self._count("no_calibration", len(taken))
            taken = []
        pre_events = [_from_inference(t.event) for t in pre]
        taken_events, squeezed = self._screen(taken, current) if taken else ([], None)
        messages = [(e.event_id, e.to_bytes()) for e in pre_events + taken_events]
        delivered, error = publish_all(self.bus, self.topic, messages)
        if error is not None:
            raise ConnectionError(f"screening events not all acknowledged ({delivered} of {len(messages)}): {error}")
        # Listed for the dashboard after the scores are out (a failure here retries the batch).
        drawn = [i for i, t in enumerate(pre) if t.pixels is not None]
        if drawn and current is not None:  # flagged in inference: the squeezed copy is redrawn for these only
            redrawn = self.screener.screen(torch.stack([pre[i].pixels for i in drawn]), current.calibration)
            self._record([pre_events[i] for i in drawn], [pre[i].pixels for i in drawn], redrawn.squeezed)
        which = [i for i, e in enumerate(taken_events) if e.flagged]
        if which:
            self._record([taken_events[i] for i in which], [taken[i].pixels for i in which], squeezed[which])
        self._count("screened", len(taken))
        self._count("screened_in_inference", len(pre))
        self._count("flagged", len(which) + sum(e.flagged for e in pre_events))
        self._batch = []

    def _screen(self, taken: list[_Taken], current: StoredCalibration) -> tuple[list[ScreeningEvent], np.ndarray]:
        """One forward of ``taken`` and their squeezed copies: their events, and the squeezed copies."""
        started = time.perf_counter()
        result = self.screener.screen(torch.stack([t.pixels for t in taken]), current.calibration)
        self.metrics.seconds.labels(self.endpoint).observe(time.perf_counter() - started)
        cal, events = current.calibration, []
        for i, t in enumerate(taken):
            probs = result.probabilities[i]
            top = int(probs.argmax())
            events.append(ScreeningEvent(
                event_id=t.event.event_id, inference_time=t.event.time, endpoint=t.event.endpoint,
                variant=t.event.variant, model_version=t.event.model_version, score=round(float(result.scores[i]), 6),
                flagged=bool(result.flagged[i]), threshold=cal.threshold, fpr=cal.fpr, squeezer=result.squeezer[i],
                signal=cal.signal, predicted_class=top, probability=min(1.0, max(0.0, float(probs[top]))),
                calibration_id=current.where[-128:]))
        return events, result.squeezed

    def _record(self, events: list[ScreeningEvent], pixels: list[torch.Tensor], squeezed: np.ndarray) -> None:
        if self.flagged is None or not events:
            return
        drawn, listed = self.flagged.record(events, torch.stack(pixels), squeezed)
        self._count("triptych", drawn)
        self._count("listed", listed)

    def discard(self) -> None:
        self._batch = []


def build_screening_loop(settings: Settings, bus: EventBus, store: ObjectStore, model: torch.nn.Module,
                         spec: ModelSpec, registry: CollectorRegistry | None = None,
                         state: StateStore | None = None) -> ConsumerLoop | None:
    """The screening loop of the explainer (``model``: the one it explains with, the served one),
    or None when ``screening_enabled`` is off. With ``state``, flagged events are listed for the
    dashboard (with their triptychs in ``store``)."""
    if not settings.screening_enabled:
        return None
    from signwatch.monitoring.baseline import store_prefix

    bus.ensure_topics([settings.inference_topic, settings.screening_topic], settings.topic_partitions)
    registry = registry or CollectorRegistry()
    prefix = settings.monitor_baseline_prefix or store_prefix(settings.endpoint)
    handler = ScreeningHandler(
        Screener(model, spec), CalibrationKeeper(store, prefix, spec.version, settings.monitor_baseline_reload_seconds),
        store, bus, settings.screening_topic, settings.endpoint, ScreeningMetrics.create(registry),
        sample_rate=settings.screening_sample_rate, batch_size=settings.screening_batch_size,
        max_image_side=settings.max_image_side)
    if state is not None:
        handler.flagged = FlaggedRecorder(
            model, spec, state, TriptychWriter(store, settings.screening_flagged_prefix),
            ExplainBudget(settings.screening_explain_max_per_minute), settings.screening_flagged_max)
    return ConsumerLoop(bus, [settings.inference_topic], settings.screening_group, handler, registry=registry,
                        poll_timeout_ms=min(settings.poll_timeout_ms, 250))
