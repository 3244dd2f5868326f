"""The inference core: validate, decode, predict, answer and publish, for every transport.

CPU work stays off the event loop. The loop checks a request's headers and magic bytes only;
a PNG or JPEG is queued as it came and decoded (and hashed) in the forward worker that runs its
batch: one thread hop per batch rather than one per request (without a model, 1,410 against 890
requests/s on the 2-core CPU), and the queue holds compressed bodies, not decoded images. An
``.npy`` body, perhaps a batch of 64 images, is decoded in a small thread pool (its size bounds
those decodes) and queued as images. The request path only awaits, builds the answer and
enqueues the events.

Admission is bounded three ways, each answering at once rather than waiting without bound:
request bodies held (bytes), images queued for the model (the batcher's queue), and images per
request. The input payload is encoded once per image; the claim-check decision (inline base64 or
an object-store reference) is taken once, on the raw bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from signwatch.classifier import BatcherFull, BatcherStopped, MicroBatcher
from signwatch.events import InferenceOutput, Prediction, encode_inference_event, new_id, utc_now
from signwatch.imaging import ImageError, check_request, decode_checked, encode_npy
from signwatch.publishing import EncodedEvent, input_key, make_input_payload

log = logging.getLogger(__name__)

SNIFFED_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/x-npy"}
MAX_INFERENCE_ID = 64  # SageMaker's limit for InferenceId
MAX_CUSTOM_ATTRIBUTES = 1024  # ... and for CustomAttributes
RESPONSE_TYPE = "application/json"


class InvocationError(Exception):
    """A request that gets no prediction. ``kind`` says whose fault, for the transport's mapping:

    - ``validation``: the call itself is wrong (a header, an argument): 400
    - ``input``: the body was refused as an image (``status`` 400, 408, 413 or 415)
    - ``busy``: the model's queue or the body budget is full: 429, try again soon
    - ``unavailable``: the model is not serving (starting, stopping): 503
    """

    def __init__(self, kind: str, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.status, self.code, self.message = kind, status, code, message


class BatchOutput(BaseModel):
    """The answer to a batch (an .npy of N images): one top-k list per image."""

    predictions: list[list[Prediction]]
    model_version: str


@dataclass
class Invocation:
    body: bytes
    content_type: str | None = None
    inference_id: str | None = None
    custom_attributes: str | None = None


@dataclass
class Answer:
    body: bytes
    event_ids: list[str]
    content_type: str = RESPONSE_TYPE
    _events: tuple | None = field(default=None, repr=False)  # what ``publish`` builds the events from


@dataclass
class _Prepared:
    """A request's images with each one's payload, encoded once (one per event)."""
    images: list  # decoded arrays; None: a PNG/JPEG body the forward worker decodes
    content_type: str  # what the bytes are (sniffed)
    raws: list[bytes]  # one per event: the body, or each image of a batch as .npy
    digests: list[str | None]  # sha256 of each raw; None until the forward worker has hashed it
    batch: bool


@dataclass
class _Queued:
    """One image waiting for the model: decoded already, or the PNG/JPEG body still to decode."""
    event_id: str
    image: object = None  # np.ndarray
    body: bytes | None = None
    kind: str | None = None  # what check_request found the body to be


@dataclass
class _Predicted:
    predictions: list[Prediction]
    digest: str | None  # sha256 of the body, when the forward worker decoded it


@dataclass
class InferenceService:
    settings: object  # signwatch.config.Settings
    classifier: object  # signwatch.classifier.Classifier
    publisher: object | None  # signwatch.publishing.EventPublisher; None: capture off
    registry: CollectorRegistry
    _inflight_bytes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        # The bounded queue in front of the model; its batches run ``forward_batch``.
        self.batcher = MicroBatcher(self.forward_batch, s.max_batch_size, s.max_batch_wait_ms,
                                    max_queue=s.inference_queue_size, registry=self.registry,
                                    workers=s.forward_workers)
        self._decoder = ThreadPoolExecutor(max_workers=s.decode_workers, thread_name_prefix="decode")
        self.latency = Histogram(
            "signwatch_inference_latency_seconds", "Time from request to answer", registry=self.registry,
            buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.refused = Counter("signwatch_inference_refused_total", "Requests answered without a prediction",
                               ["kind"], registry=self.registry)

    @property
    def model_version(self) -> str:
        return self.classifier.spec.version

    # ---- admission: before the body is read, from its declared length
    def admit(self, declared_bytes: int | None) -> int:
        """Reserve room for a body; returns the reservation to ``release``. Raises InvocationError."""
        s = self.settings
        size = declared_bytes if declared_bytes is not None else s.max_body_bytes
        if declared_bytes is not None and declared_bytes > s.max_body_bytes:
            raise self._refuse("input", 413, "payload_too_large",
                               f"body of {declared_bytes} bytes exceeds the {s.max_body_bytes}-byte limit")
        if self._inflight_bytes + size > s.max_inflight_bytes or self.batcher.room() <= 0:
            raise self._refuse("busy", 429, "busy", "the model is busy: too many requests in flight; retry")
        self._inflight_bytes += size
        return size

    def release(self, reservation: int) -> None:
        self._inflight_bytes -= reservation

    def _refuse(self, kind: str, status: int, code: str, message: str) -> InvocationError:
        self.refused.labels(kind).inc()
        return InvocationError(kind, status, code, message)

    def refuse_input(self, exc: ImageError) -> InvocationError:
        code = {408: "body_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}.get(
            exc.status, "bad_image")
        return self._refuse("input", exc.status, code, str(exc))

    # ---- the call
    async def invoke(self, call: Invocation) -> Answer:
        started = time.perf_counter()
        when = utc_now()
        self._validate(call)
        try:
            kind = check_request(call.body, call.content_type)
            if kind == "npy":
                prepared = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, self._prepare_arrays, call.body)
            else:
                prepared = _Prepared([None], SNIFFED_TYPES[kind], [call.body], [None], False)
            event_ids = [new_id() for _ in prepared.raws]
            answers = await self._predict([
                _Queued(event_id, image=image, body=None if image is not None else raw, kind=kind)
                for event_id, image, raw in zip(event_ids, prepared.images, prepared.raws)])
        except ImageError as exc:
            raise self.refuse_input(exc) from None
        predictions = [a.predictions for a in answers]
        prepared.digests = [a.digest or d for a, d in zip(answers, prepared.digests)]
        outputs = [InferenceOutput(predictions=p, model_version=self.model_version) for p in predictions]
        texts = [o.model_dump_json() for o in outputs]
        if prepared.batch:  # one prediction list per image, in the order sent
            body = BatchOutput(predictions=predictions, model_version=self.model_version).model_dump_json().encode()
        else:
            body = texts[0].encode()
        latency_ms = (time.perf_counter() - started) * 1000
        self.latency.observe(latency_ms / 1000)
        events = (call, prepared, event_ids, texts, when, latency_ms) if self.publisher is not None else None
        return Answer(body=body, event_ids=event_ids, _events=events)

    def publish(self, answer: Answer) -> None:
        """Hand the answer's events to the publisher (an enqueue). The transport calls it once the
        answer is sent, so that the client does not wait for the events to be built."""
        if answer._events is not None:
            self._publish(*answer._events)
            answer._events = None

    def _validate(self, call: Invocation) -> None:
        if call.inference_id is not None and not 1 <= len(call.inference_id) <= MAX_INFERENCE_ID:
            raise self._refuse("validation", 400, "invalid_inference_id",
                               f"InferenceId must be 1 to {MAX_INFERENCE_ID} characters")
        if call.custom_attributes is not None and (
                len(call.custom_attributes) > MAX_CUSTOM_ATTRIBUTES or not call.custom_attributes.isascii()):
            raise self._refuse("validation", 400, "invalid_custom_attributes",
                               f"CustomAttributes must be at most {MAX_CUSTOM_ATTRIBUTES} ASCII characters")

    def _prepare_arrays(self, body: bytes) -> _Prepared:
        """In a decode thread: an .npy body's images, and each event's payload encoded once."""
        s = self.settings
        images, batch = decode_checked(body, "npy", s.max_image_side, s.max_image_pixels, s.max_batch_images)
        raws = [encode_npy(image) for image in images] if batch else [body]
        return _Prepared(images, SNIFFED_TYPES["npy"], raws, [hashlib.sha256(r).hexdigest() for r in raws], batch)

    def forward_batch(self, queued: list[_Queued]) -> list:
        """In a forward worker: decode and hash the bodies still compressed, then one forward for
        the batch. A body that does not decode gets its ImageError; the others are answered."""
        s = self.settings
        answers: list = [None] * len(queued)
        ready, digests = [], {}
        for i, item in enumerate(queued):
            if item.image is None:
                try:
                    item.image = decode_checked(item.body, item.kind, s.max_image_side, s.max_image_pixels, 1)[0][0]
                except ImageError as exc:
                    answers[i] = exc
                    continue
                digests[i] = hashlib.sha256(item.body).hexdigest()
            ready.append(i)
        if ready:
            predictions = self.classifier.predict([(queued[i].image, queued[i].event_id) for i in ready])
            for i, p in zip(ready, predictions):
                answers[i] = _Predicted(p, digests.get(i))
        for item in queued:  # the pixels are not needed any more; the caller keeps the items
            item.image = None
        return answers

    async def _predict(self, queued: list[_Queued]) -> list[_Predicted]:
        if len(queued) > self.batcher.room():
            raise self._refuse("busy", 429, "busy", "the model's queue is full; retry")
        futures = []
        try:
            for item in queued:
                futures.append(self.batcher.enqueue(item))
        except BatcherFull as exc:
            for f in futures:
                f.cancel()
            raise self._refuse("busy", 429, "busy", f"{exc}; retry") from None
        except BatcherStopped as exc:
            raise self._refuse("unavailable", 503, "unavailable", str(exc)) from None
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:  # the client went away: the batcher skips what is cancelled
            for f in futures:
                f.cancel()
            raise

    def _publish(self, call: Invocation, prepared: _Prepared, event_ids: list[str], texts: list[str], when,
                 latency_ms: float) -> None:
        s = self.settings
        observed = call.content_type or "application/octet-stream"
        for raw, digest, event_id, text in zip(prepared.raws, prepared.digests, event_ids, texts):
            ctype = prepared.content_type
            claim = len(raw) > s.inline_input_limit_bytes  # decided once, on the raw bytes
            ref = input_key(s.endpoint, when, event_id, ctype) if claim else None
            value = encode_inference_event(
                event_id=event_id, inference_id=call.inference_id, custom_attributes=call.custom_attributes,
                time=when, endpoint=s.endpoint, variant=s.variant, model_version=self.model_version,
                input=make_input_payload(raw, ctype, observed_content_type=observed, ref=ref, sha256=digest),
                output_json=text, response_type=RESPONSE_TYPE, latency_ms=round(latency_ms, 3),
            )
            self.publisher.submit(EncodedEvent(event_id, value, ref, ctype), raw if claim else None)

    # ---- health
    def readiness(self) -> dict[str, bool]:
        """Blocking (asks the broker and the store now): call it from a worker thread."""
        checks = {"model": self.classifier.model is not None, "batcher": self.batcher.running}
        if self.publisher is not None:
            checks["bus"] = self.publisher.bus.ping()
            checks["store"] = self.publisher.store.ping()
        return checks

    def close(self) -> None:
        self._decoder.shutdown(wait=False)
