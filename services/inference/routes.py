"""HTTP routes of the inference service (SageMaker's /invocations and /ping, plus health)."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from signwatch.events import InferenceEvent, InferenceOutput, new_id
from signwatch.imaging import ImageError, decode_image, sniff
from signwatch.publishing import make_input_payload
from signwatch_services.health import health_router
from signwatch_services.http import error, read_limited
from signwatch_services.inference.admin import admin_router

INFERENCE_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-inference-id")
SNIFFED_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/x-npy"}


def create_app(core) -> FastAPI:
    settings = core.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await core.batcher.start()
        app.state.started = True
        yield
        await core.batcher.stop()
        core.publisher.drain()

    app = FastAPI(title="signwatch inference", version=core.spec.version, lifespan=lifespan)
    app.state.core = core
    app.include_router(admin_router(core))

    @app.exception_handler(ImageError)
    async def image_error(_request: Request, exc: ImageError) -> JSONResponse:
        code = {413: "payload_too_large", 415: "unsupported_media_type"}.get(exc.status, "bad_image")
        return error(exc.status, code, str(exc))

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = await read_limited(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "application/octet-stream")
        image = decode_image(body, content_type, settings.max_image_side)
        event_id = new_id()
        predictions = await core.batcher.submit((image, event_id))
        output = InferenceOutput(predictions=predictions, model_version=core.spec.version)
        latency_ms = (time.perf_counter() - started) * 1000
        inference_id = next(
            (request.headers[h] for h in INFERENCE_ID_HEADERS if h in request.headers), None
        )
        # Recorded as what the body is (decode_image checked it), not what the header claimed.
        canonical_type = SNIFFED_TYPES[sniff(body)]
        event = InferenceEvent(
            event_id=event_id,
            inference_id=inference_id[:256] if inference_id else None,
            endpoint=settings.endpoint,
            variant=settings.variant,
            model_version=core.spec.version,
            input=make_input_payload(body, canonical_type),
            output=output,
            latency_ms=round(latency_ms, 3),
        )
        core.publisher.submit(event)
        core.latency.observe(latency_ms / 1000)
        return JSONResponse(
            content=output.model_dump(mode="json"),
            headers={"X-Signwatch-Event-Id": event.event_id},
        )

    @app.get("/ping")
    async def ping() -> JSONResponse:
        ready = _readiness(core)
        return JSONResponse(status_code=200 if all(ready.values()) else 503, content={"status": ready})

    app.include_router(health_router(lambda: True, lambda: _readiness(core), core.registry))

    return app


def _readiness(core) -> dict[str, bool]:
    return {
        "model": core.classifier.model is not None,
        "bus": core.ports.bus.ping(),
    }
