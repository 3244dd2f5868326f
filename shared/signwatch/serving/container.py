"""SageMaker's container contract (``POST /invocations``), and the body parsing its runtime API shares.

The body is one image (PNG, JPEG or ``.npy``; ``Content-Type`` says which or, as
``application/octet-stream``, the magic bytes do) or an ``.npy`` batch (N, H, W, 3). The answer is
the top-k JSON (``InferenceOutput``; for a batch one list per image), with ``adversarial_score``
and ``flagged`` beside it (per image for a batch) when the service screens in its batch; errors are
``{"error": {"code", "message"}}`` with the status of their reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel

from signwatch.events import Prediction
from signwatch.imaging import ImageError, check_request, decode_checked, encode_npy
from signwatch.serving.core import (
    ImageInput,
    InferenceRequest,
    InferenceResult,
    ServingError,
    refused_image,
)

RESPONSE_TYPE = "application/json"
STATUS_BY_REASON = {"bad_image": 400, "payload_too_large": 413, "unsupported_media_type": 415, "body_timeout": 408}
STATUS_BY_KIND = {"validation": 400, "input": 400, "busy": 429, "unavailable": 503}


class BatchOutput(BaseModel):
    """The answer to a batch (an .npy of N images): one top-k list per image; with in-inference
    screening on, one adversarial score and one flag per image too (unwritten when off)."""

    predictions: list[list[Prediction]]
    model_version: str
    adversarial_score: list[float] | None = None
    flagged: list[bool] | None = None


@dataclass
class ContainerRequest:
    inference: InferenceRequest
    batch: bool  # a 4-D .npy: answered with one list per image


async def parse(service, body: bytes, content_type: str | None, inference_id: str | None = None,
                custom_attributes: str | None = None) -> ContainerRequest:
    """The body's images. On the event loop only the type is checked (headers and magic bytes): a
    PNG or JPEG goes to the forward worker as it came; an .npy is decoded in the decode pool."""
    service.check_metadata(inference_id, custom_attributes)  # before any decoding
    try:
        kind = check_request(body, content_type)
    except ImageError as exc:
        raise refused_image(exc) from None
    if kind == "npy":
        images, batch = await service.offload(_npy_images, body, service.settings)
    else:
        images, batch = [ImageInput.encoded(body, kind)], False
    observed = content_type or "application/octet-stream"
    return ContainerRequest(InferenceRequest(images, observed, inference_id, custom_attributes), batch)


def _npy_images(body: bytes, settings) -> tuple[list[ImageInput], bool]:
    """In a decode thread: an .npy body's images, each event's payload encoded and hashed once (a
    single image's payload is the body; each image of a batch its own .npy)."""
    s = settings
    arrays, batch = decode_checked(body, "npy", s.max_image_side, s.max_image_pixels, s.max_batch_images)
    payloads = [encode_npy(a) for a in arrays] if batch else [body]
    return [ImageInput.decoded(a, p, hashlib.sha256(p).hexdigest()) for a, p in zip(arrays, payloads)], batch


def response_body(result: InferenceResult, batch: bool) -> bytes:
    if batch:  # one prediction list per image, in the order sent
        screened = result.screenings or []
        output = BatchOutput(predictions=result.predictions, model_version=result.model_version,
                             adversarial_score=[s.score for s in screened] if screened else None,
                             flagged=[s.flagged for s in screened] if screened else None)
        return output.model_dump_json(exclude_none=True).encode()
    return result.outputs[0].encode()  # the very text the event carries


def status_of(exc: ServingError) -> int:
    return STATUS_BY_REASON.get(exc.reason) or STATUS_BY_KIND.get(exc.kind, 500)


def error_body(exc: ServingError) -> dict:
    return {"error": {"code": exc.reason, "message": exc.message}}
