"""The serving core: admission bounds, prediction and events, for every protocol.

A protocol module (``container.py``: SageMaker's container contract, ``sagemaker.py``: its runtime
API, ``v2.py``: the Open Inference Protocol) turns its request into ``ImageInput``s and request
metadata, calls ``InferenceService.infer`` and shapes the ``InferenceResult`` into its own
response. The core builds no response body and knows no HTTP status: its ``ServingError`` carries
a kind and a reason, which each protocol maps to its statuses. So a new front end (gRPC) is one
more protocol module.

CPU work stays off the event loop. The loop checks a request's headers and magic bytes only;
a PNG or JPEG is queued as it came and decoded (and hashed: sha256 and the perceptual hash
of every image) in the forward worker that runs its
batch: one thread hop per batch rather than one per request (without a model, 1,410 against 890
requests/s on the 2-core CPU), and the queue holds compressed bodies, not decoded images. Heavier
parsing (an ``.npy`` batch of 64 images, a V2 tensor written out in JSON) runs in a small thread
pool (``offload``; its size bounds those decodes). The request path only awaits and enqueues.

Admission is bounded three ways, each answering at once rather than waiting without bound:
request bodies held (bytes as they arrive, and a few slots for slow uploads: ``admission.py``),
images queued for the model (the batcher's queue), and images per request. The input payload is encoded once per image; the claim-check decision (inline base64 or
an object-store reference) is taken once, on the raw bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from signwatch.classifier import BatcherFull, BatcherStopped, Classification, MicroBatcher
from signwatch.events import InferenceOutput, Prediction, encode_inference_event, new_id, utc_now
from signwatch.imaging import ImageError, decode_checked, encode_npy, perceptual_hash
from signwatch.publishing import EncodedEvent, input_key, make_input_payload

log = logging.getLogger(__name__)

SNIFFED_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/x-npy"}
ENCODED_KINDS = {"image/png": "png", "image/jpeg": "jpeg"}  # what the forward worker decodes
MAX_INFERENCE_ID = 64  # SageMaker's limit for InferenceId
MAX_CUSTOM_ATTRIBUTES = 1024  # ... and for CustomAttributes
OUTPUT_TYPE = "application/json"  # each image's output as its event carries it


class ServingError(Exception):
    """A request that gets no prediction. ``kind`` says whose fault, ``reason`` what exactly; each
    protocol maps them to its own statuses:

    - ``validation``: the call itself is wrong (a header, an argument, the protocol's envelope)
    - ``input``: an image was refused (``bad_image``, ``payload_too_large``,
      ``unsupported_media_type``, ``body_timeout``)
    - ``busy``: the model's queue or the body budget is full: try again soon
    - ``unavailable``: the model is not serving (starting, stopping)
    """

    def __init__(self, kind: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.reason, self.message = kind, reason, message


def refused_image(exc: ImageError) -> ServingError:
    return ServingError("input", exc.reason, str(exc))


@dataclass(eq=False)
class ImageInput:
    """One image for the model, and the bytes its event carries as the input.

    ``pixels``: decoded already (uint8 H x W x 3), or None: ``payload`` is a PNG or JPEG that the
    forward worker decodes with its batch. ``payload`` None: the worker encodes the pixels as
    ``.npy``. ``sha256`` None: the worker hashes the payload. ``image_hash``: the pixels' perceptual
    hash, which the worker computes for each image. The pixels are dropped once predicted.
    """

    payload: bytes | None
    content_type: str  # what the payload is: image/png, image/jpeg, application/x-npy
    pixels: np.ndarray | None = None
    sha256: str | None = None
    image_hash: str | None = None

    @classmethod
    def encoded(cls, data: bytes, kind: str) -> ImageInput:
        """A PNG or JPEG (``kind`` as ``imaging.sniff`` says), decoded later in the forward worker."""
        return cls(data, SNIFFED_TYPES[kind])

    @classmethod
    def decoded(cls, pixels: np.ndarray, payload: bytes | None = None, sha256: str | None = None) -> ImageInput:
        """Pixels; their event carries ``payload`` (an ``.npy``), or the pixels as ``.npy``."""
        return cls(payload, SNIFFED_TYPES["npy"], pixels, sha256)


@dataclass
class InferenceRequest:
    images: list[ImageInput]
    observed_content_type: str | None = None  # the request's content type, as data capture records it
    inference_id: str | None = None  # the client's id for the request (events and capture carry it)
    custom_attributes: str | None = None
    started: float | None = None  # time.perf_counter() once the body was read: latency counts the parsing


@dataclass
class InferenceResult:
    """Per image, in the order sent: its top-k (best first), its softmax over every class, its
    output as the canonical JSON (``InferenceOutput``: what its event carries) and its event id;
    with in-inference screening on, its screening (``InferenceScreening``: score, flagged, ...)."""

    predictions: list[list[Prediction]]
    probabilities: list[np.ndarray]
    outputs: list[str]
    event_ids: list[str]
    model_version: str
    _events: tuple | None = field(default=None, repr=False)  # what ``publish`` builds the events from
    screenings: list | None = None  # None: screening off (``Settings.screening_in_inference``)


@dataclass
class _Queued:
    """One image waiting for the model."""
    event_id: str
    image: ImageInput


@dataclass
class InferenceService:
    settings: object  # signwatch.config.Settings
    classifier: object  # signwatch.classifier.Classifier
    publisher: object | None  # signwatch.publishing.EventPublisher; None: capture off
    registry: CollectorRegistry
    # signwatch.serving.screening.InlineScreening: each batch screened in its forward; None: off
    screening: object | None = None

    def __post_init__(self) -> None:
        from signwatch.serving.admission import BodyBudget  # here: admission.py imports ServingError

        s = self.settings
        self.bodies = BodyBudget(s.max_inflight_bytes, s.max_slow_uploads, self.registry)
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

    # ---- admission: before the body is read
    def admit(self, declared_bytes: int | None):
        """A ticket (``admission.BodyTicket``) for a body about to be read: the transport counts its
        bytes as they arrive (``hold``) and releases it once answered. Nothing is reserved for the
        declared length: a client that declares 6 MB and trickles it holds what it sent. Raises
        ServingError: a declared length over the body limit (413), the model's queue full (429)."""
        s = self.settings
        if declared_bytes is not None and declared_bytes > s.max_body_bytes:
            raise ServingError("input", "payload_too_large",
                               f"body of {declared_bytes} bytes exceeds the {s.max_body_bytes}-byte limit")
        if self.batcher.room() <= 0:
            raise ServingError("busy", "busy", "the model is busy: too many requests in flight; retry")
        return self.bodies.ticket()

    def release(self, ticket) -> None:
        ticket.release()

    def count_refusal(self, exc: ServingError) -> None:
        """A request answered with an error: the transport counts it once, whoever refused it."""
        self.refused.labels(exc.kind).inc()

    async def offload(self, parse, *args):
        """``parse(*args)`` in the decode pool, never on the event loop: CPU-heavy parsing (an
        ``.npy`` batch, a tensor in JSON). An ImageError it raises becomes a ServingError."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, parse, *args)
        except ImageError as exc:
            raise refused_image(exc) from None

    # ---- the call
    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Predict every image of the request (one batcher item each); raises ServingError."""
        started = request.started or time.perf_counter()
        when = utc_now()
        self._validate(request)
        event_ids = [new_id() for _ in request.images]
        try:
            answers = await self._predict([_Queued(e, image) for e, image in zip(event_ids, request.images)])
        except ImageError as exc:
            raise refused_image(exc) from None
        predictions = [a.predictions for a in answers]
        screenings = [a.screening for a in answers] if self.screening is not None else None
        if screenings is None:
            outputs = [InferenceOutput(predictions=p, model_version=self.model_version).model_dump_json()
                       for p in predictions]
        else:
            outputs = [InferenceOutput(predictions=p, model_version=self.model_version, adversarial_score=s.score,
                                       flagged=s.flagged).model_dump_json() for p, s in zip(predictions, screenings)]
        latency_ms = (time.perf_counter() - started) * 1000
        self.latency.observe(latency_ms / 1000)
        events = (request, event_ids, outputs, when, latency_ms, screenings) if self.publisher is not None else None
        return InferenceResult(predictions, [a.probabilities for a in answers], outputs, event_ids,
                               self.model_version, events, screenings)

    def publish(self, result: InferenceResult) -> None:
        """Hand the result's events to the publisher (an enqueue). The transport calls it once the
        answer is sent, so that the client does not wait for the events to be built."""
        if result._events is not None:
            self._publish(*result._events)
            result._events = None

    @staticmethod
    def check_metadata(inference_id: str | None, custom_attributes: str | None) -> None:
        """Raise for request metadata an event cannot carry; protocols may ask before parsing."""
        if inference_id is not None and not 1 <= len(inference_id) <= MAX_INFERENCE_ID:
            raise ServingError("validation", "invalid_inference_id",
                               f"InferenceId must be 1 to {MAX_INFERENCE_ID} characters")
        if custom_attributes is not None and (
                len(custom_attributes) > MAX_CUSTOM_ATTRIBUTES or not custom_attributes.isascii()):
            raise ServingError("validation", "invalid_custom_attributes",
                               f"CustomAttributes must be at most {MAX_CUSTOM_ATTRIBUTES} ASCII characters")

    def _validate(self, request: InferenceRequest) -> None:
        s = self.settings
        self.check_metadata(request.inference_id, request.custom_attributes)
        if not 1 <= len(request.images) <= s.max_batch_images:
            raise ServingError("input", "payload_too_large" if request.images else "bad_image",
                               f"a request holds 1 to {s.max_batch_images} images; got {len(request.images)}")

    def forward_batch(self, queued: list[_Queued]) -> list:
        """In a forward worker: decode the PNG/JPEG bodies still compressed, encode and hash each
        event's payload, then one forward for the batch. A body that does not decode gets its
        ImageError; the others are answered (a ``Classification`` each)."""
        s = self.settings
        answers: list = [None] * len(queued)
        ready = []
        for i, item in enumerate(queued):
            image = item.image
            if image.pixels is None:
                try:
                    image.pixels = decode_checked(image.payload, ENCODED_KINDS[image.content_type],
                                                  s.max_image_side, s.max_image_pixels, 1)[0][0]
                except ImageError as exc:
                    answers[i] = exc
                    continue
            if image.payload is None:
                image.payload = encode_npy(image.pixels)
            if image.sha256 is None:
                image.sha256 = hashlib.sha256(image.payload).hexdigest()
            if image.image_hash is None:  # while the pixels are here: the monitor folds near-duplicates
                image.image_hash = perceptual_hash(image.pixels)
            ready.append(i)
        if ready:
            requests = [(queued[i].image.pixels, queued[i].event_id) for i in ready]
            classified = (self.classifier.classify(requests) if self.screening is None
                          else self.screening.classify(self.classifier, requests))
            for i, c in zip(ready, classified):
                answers[i] = c
        for item in queued:  # the pixels are not needed any more; the request keeps its payloads
            item.image.pixels = None
        return answers

    async def _predict(self, queued: list[_Queued]) -> list[Classification]:
        if len(queued) > self.batcher.room():
            raise ServingError("busy", "busy", "the model's queue is full; retry")
        futures = []
        try:
            for item in queued:
                futures.append(self.batcher.enqueue(item))
        except BatcherFull as exc:
            for f in futures:
                f.cancel()
            raise ServingError("busy", "busy", f"{exc}; retry") from None
        except BatcherStopped as exc:
            raise ServingError("unavailable", "unavailable", str(exc)) from None
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:  # the client went away: the batcher skips what is cancelled
            for f in futures:
                f.cancel()
            raise

    def _publish(self, request: InferenceRequest, event_ids: list[str], outputs: list[str], when,
                 latency_ms: float, screenings: list | None) -> None:
        s = self.settings
        for i, (image, event_id, text) in enumerate(zip(request.images, event_ids, outputs)):
            raw, ctype = image.payload, image.content_type
            claim = len(raw) > s.inline_input_limit_bytes  # decided once, on the raw bytes
            ref = input_key(s.endpoint, when, event_id, ctype) if claim else None
            value = encode_inference_event(
                event_id=event_id, inference_id=request.inference_id, custom_attributes=request.custom_attributes,
                time=when, endpoint=s.endpoint, variant=s.variant, model_version=self.model_version,
                input=make_input_payload(raw, ctype, observed_content_type=request.observed_content_type, ref=ref,
                                         sha256=image.sha256),
                output_json=text, response_type=OUTPUT_TYPE, latency_ms=round(latency_ms, 3),
                image_hash=image.image_hash, screening=screenings[i] if screenings is not None else None,
            )
            self.publisher.submit(EncodedEvent(event_id, value, ref, ctype), raw if claim else None)

    # ---- health
    def readiness(self) -> dict[str, bool]:
        """Ready = it can answer: the model loaded, the batcher running, the event buffer not full.
        The broker and the store are not asked: while they are away requests are still answered and
        events wait in the buffer (``dependencies``). No I/O: cheap enough for the event loop."""
        checks = {"model": self.classifier.model is not None, "batcher": self.batcher.running}
        if self.publisher is not None:
            checks["event_buffer"] = not self.publisher.full
        return checks

    def dependencies(self) -> dict:
        """Pings (blocking, each bounded by its port) of the servers the events go to, by name."""
        if self.publisher is None:
            return {}
        return {"bus": self.publisher.bus.ping, "store": self.publisher.store.ping}

    def close(self) -> None:
        self._decoder.shutdown(wait=False)
