"""Publishing inference events without ever blocking or failing a request.

The request handler hands the event to a bounded queue and returns. One background thread
moves large inputs to the object store (claim check), then publishes to the bus. Every event
ends in exactly one counter: published, failed (the bus refused it) or dropped (the queue was
full) - nothing is silently lost.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from signwatch.events import InferenceEvent, InputPayload
from signwatch.ports.bus import EventBus
from signwatch.ports.store import ObjectStore

log = logging.getLogger(__name__)

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "application/x-npy": "npy"}


def make_input_payload(body: bytes, content_type: str) -> InputPayload:
    return InputPayload(
        content_type=content_type,
        data=base64.b64encode(body).decode(),
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
    )


def claim_check_key(event: InferenceEvent) -> str:
    ext = EXTENSIONS.get(event.input.content_type, "bin")
    t = event.time
    return f"inputs/{event.endpoint}/{t:%Y/%m/%d/%H}/{event.event_id}.{ext}"


def resolve_input(payload: InputPayload, store: ObjectStore) -> bytes:
    """The raw request bytes of an event, inline or behind a claim check, integrity-checked."""
    raw = base64.b64decode(payload.data) if payload.data is not None else store.get(payload.ref)
    if hashlib.sha256(raw).hexdigest() != payload.sha256:
        raise ValueError("input bytes do not match the event's sha256")
    return raw


@dataclass
class EventPublisher:
    bus: EventBus
    store: ObjectStore
    topic: str
    registry: CollectorRegistry
    inline_limit: int = 256 * 1024
    queue_size: int = 10_000
    _queue: queue.Queue = field(init=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=self.queue_size)
        self.outcomes = Counter(
            "signwatch_events_total", "Inference events by outcome",
            ["outcome"], registry=self.registry,
        )
        for outcome in ("published", "failed", "dropped"):
            self.outcomes.labels(outcome)
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    def submit(self, event: InferenceEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.outcomes.labels("dropped").inc()
            log.error("event queue full: dropped event %s", event.event_id)

    def _prepare(self, event: InferenceEvent) -> InferenceEvent:
        if event.input.size <= self.inline_limit or event.input.data is None:
            return event
        key = claim_check_key(event)
        self.store.put(key, base64.b64decode(event.input.data), event.input.content_type)
        return event.model_copy(update={"input": event.input.model_copy(update={"data": None, "ref": key})})

    def _on_delivery(self, event_id: str):
        def done(error: Exception | None) -> None:
            if error is None:
                self.outcomes.labels("published").inc()
            else:
                self.outcomes.labels("failed").inc()
                log.error("event %s not published: %s", event_id, error)
        return done

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                prepared = self._prepare(event)
                self.bus.publish(self.topic, prepared.event_id, prepared.to_bytes(),
                                 on_delivery=self._on_delivery(event.event_id))
            except Exception as exc:  # noqa: BLE001 - counted, never raised into a request
                self.outcomes.labels("failed").inc()
                log.error("event %s not published: %s", event.event_id, exc)
            finally:
                self._queue.task_done()

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every submitted event was handed to the bus, then flush the bus."""
        self._queue.join()
        self.bus.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.drain(timeout_s)
        finally:
            self._queue.put(None)
            self._thread.join(timeout_s)
