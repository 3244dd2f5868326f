"""``POST /ground-truth``: labels for served predictions, sent to the monitor over HTTP.

The body is a JSON list of at most ``MAX_LABELS_PER_CALL`` labels, each either SageMaker's
ground-truth record or a compact one::

    {"groundTruthData": {"data": "14", "encoding": "CSV"}, "eventMetadata": {"eventId": "..."}, "eventVersion": "0"}
    {"id": "...", "label": 14}          (or "14", or the class name "Stop"; "inferenceId" or
                                         "eventId" in place of "id")

Each label becomes a ``GroundTruthRecord`` of this monitor's endpoint and is read by
``groundtruth.parse_label``, the reader of label files and of the topic, so that a wrong label
(an unknown class, no id, an id too long...) is counted by the same reason wherever it comes
from. A wrong label is reported, never fatal to the others. The good ones are published to
``Settings.ground_truth_topic`` (key: the id the label names; value: the record's JSON) and the
call answers only once the bus acknowledged them all: 202 ``{"received", "published",
"rejected": {reason: count}, "examples": [...]}``. When the bus does not acknowledge them, 503
with what was published: the client sends the whole call again (the join counts the first
label of a prediction, so a label published twice is harmless).

Admin-only (``signwatch_services.auth``). Refused before the body is read: a wrong content type
(415), a Content-Length over ``MAX_GROUND_TRUTH_BODY_BYTES`` (413), a monitor that does not know
the served model yet (503 with Retry-After: the names of its classes are needed to read a label).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from signwatch.config import Settings
from signwatch.events import GroundTruthRecord
from signwatch.imaging import ImageError
from signwatch.monitoring.groundtruth import MergeCounts
from signwatch.ports.bus import EventBus, publish_all
from signwatch_services.auth import NO_STORE, admin_refusal, json_error
from signwatch_services.http import read_limited
from signwatch_services.monitor.label_intake import read_items

log = logging.getLogger(__name__)

MAX_LABELS_PER_CALL = 10_000
# 10,000 labels of ~400 bytes each (a SageMaker record with a 128-character id is ~250).
MAX_GROUND_TRUTH_BODY_BYTES = 8 * 1024 * 1024
# How long the call waits for the bus to acknowledge its labels (publish_and_wait's).
PUBLISH_TIMEOUT_S = 10.0
RETRY_AFTER_S = 5  # while the monitor waits for the served model's facts
JSON_TYPES = ("application/json",)


def _rejected(counts: MergeCounts) -> dict[str, int]:
    rejected = Counter(counts.bad)
    if counts.unknown_class:
        rejected["unknown_class"] += counts.unknown_class
    return dict(sorted(rejected.items()))


def ground_truth_router(settings: Settings, bus: EventBus,
                        class_names: Callable[[], tuple[str, ...] | None]) -> APIRouter:
    """``POST /ground-truth``. ``class_names()``: the served model's classes, or None while the
    monitor does not know the model yet."""
    router = APIRouter(tags=["ground truth"])
    topic, endpoint = settings.ground_truth_topic, settings.endpoint
    bus.ensure_topics([topic], settings.topic_partitions)

    def labels_in(items: list, names: tuple[str, ...]) -> JSONResponse:
        started = time.perf_counter()
        counts = MergeCounts()
        messages = read_items(items, endpoint, names, counts)
        published, failure = publish_all(bus, topic, messages, PUBLISH_TIMEOUT_S)
        body = {"received": len(items), "published": published, "rejected": _rejected(counts),
                "examples": counts.examples}
        if failure is not None:
            log.warning("ground truth: %d of %d labels published to %s: %s", published, len(messages), topic, failure)
            return JSONResponse(status_code=503, headers={**NO_STORE, "Retry-After": str(RETRY_AFTER_S)}, content={
                "error": {"code": "bus_unavailable", "message": f"labels not all published ({failure}); send the "
                          "call again: a label published twice is counted once"}, **body})
        log.info("ground truth: %d labels received, %d published, rejected %s (%.0f ms)", len(items), published,
                 body["rejected"] or "none", (time.perf_counter() - started) * 1000)
        return JSONResponse(status_code=202, content=body, headers=NO_STORE)

    @router.post(
        "/ground-truth",
        status_code=202,
        summary="Labels for served predictions (SageMaker ground-truth records or {id, label})",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "array", "maxItems": MAX_LABELS_PER_CALL, "items": {"oneOf": [
                GroundTruthRecord.model_json_schema(by_alias=True),
                {"type": "object", "required": ["label"], "properties": {
                    "id": {"type": "string"}, "inferenceId": {"type": "string"}, "eventId": {"type": "string"},
                    "label": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}},
            ]}}}}}},
    )
    async def post_ground_truth(request: Request) -> JSONResponse:
        # Authentication first: an unauthenticated caller learns nothing else.
        if (refused := admin_refusal(settings, request)) is not None:
            return refused
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in JSON_TYPES:
            return json_error(415, "unsupported_media_type",
                              f"send a JSON list of labels as application/json, not {media_type or 'no content type'}")
        names = class_names()
        if names is None:  # before reading the body: no point receiving what cannot be read yet
            return json_error(503, "model_unknown", "the monitor does not know the served model yet, so it "
                              "cannot read class names; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            raw = await read_limited(request, MAX_GROUND_TRUTH_BODY_BYTES, settings.body_timeout_s)
        except ImageError as exc:  # read_limited's 413 (by Content-Length or while reading) or 408
            code = "payload_too_large" if exc.status == 413 else "body_timeout"
            return json_error(exc.status, code, f"{exc} ({MAX_LABELS_PER_CALL} labels at most per call)")
        try:
            items = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return json_error(400, "invalid_json", f"body is not JSON: {exc}")
        if not isinstance(items, list):
            return json_error(422, "not_a_list", f"body must be a JSON list of labels, not a JSON {type(items).__name__}")
        if len(items) > MAX_LABELS_PER_CALL:
            return json_error(413, "too_many_labels",
                              f"{len(items)} labels in one call; at most {MAX_LABELS_PER_CALL}: split them")
        # Reading and the wait for the bus run off the event loop: the probes keep answering.
        return await run_in_threadpool(labels_in, items, tuple(names))

    return router
