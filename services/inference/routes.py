"""HTTP routes of the inference service: thin. Each reads the body, calls the inference core
(``signwatch.serving``) and maps its answer or error to the protocol.

- ``POST /invocations``, ``GET /ping``: SageMaker's container contract; errors ``{"error": {...}}``
- ``POST /endpoints/{EndpointName}/invocations``: SageMaker's runtime API, as boto3 calls it
- ``GET /health/live``, ``/health/ready``, ``/metrics`` (services/health.py)
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from signwatch.imaging import ImageError
from signwatch.serving import Invocation, InvocationError
from signwatch.serving import sagemaker
from signwatch_services.health import health_router
from signwatch_services.http import error
from signwatch_services.inference.admin import admin_router

log = logging.getLogger(__name__)

INFERENCE_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-inference-id")
IMAGE_TYPES = ("image/png", "image/jpeg", "application/x-npy", "application/octet-stream")


def _schema(name: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


REQUEST_BODY = {"requestBody": {
    "required": True,
    "description": "One PNG or JPEG image, or an .npy array: (H, W), (H, W, 3), (3, H, W), or a batch "
                   "(N, H, W, 3) uint8. application/octet-stream: the type is read from the bytes.",
    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
}}
ERROR_RESPONSES = {
    status: {"description": what, **_schema("Error")} for status, what in (
        (400, "not an image, truncated, or a bad header"), (408, "the body did not arrive in time"),
        (413, "body or image too large"), (415, "unsupported content type"),
        (429, "the model's queue is full: retry"), (503, "the model is not serving"))
}
SAGEMAKER_RESPONSES = {
    status: {"description": f"{code} (x-amzn-ErrorType)", **_schema("SageMakerError")}
    for code, status in sagemaker.ERRORS.values()
}
OK = {200: {"description": "top-k predictions (one list per image for a batch)", **_schema("Predictions")}}


class BodyError(Exception):
    pass


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` (a Content-Length larger than
    what arrives would otherwise hold the request open for as long as the client likes)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ImageError(f"body exceeds the {limit}-byte limit", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise ImageError(f"the body did not arrive within {timeout_s:g} s ({size} bytes received)", 408) from None
    except ClientDisconnect:
        client = f"{request.client.host}:{request.client.port}" if request.client else "?"
        log.warning("client %s disconnected after %d of %s body bytes (%s %s)", client, size,
                    request.headers.get("content-length", "?"), request.method, request.url.path)
        raise BodyError() from None
    return b"".join(chunks)


def create_app(core) -> FastAPI:
    settings = core.settings
    service = core.service

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await core.batcher.start()
        app.state.started = True
        yield
        await core.batcher.stop()
        if core.publisher is not None:
            await run_in_threadpool(core.publisher.drain)

    app = FastAPI(title="signwatch inference", version=core.spec.version, lifespan=lifespan)
    app.state.core = core
    app.include_router(admin_router(core))

    async def call(request: Request, inference_id: str | None):
        """The body read and the core called, inside the admission bound. Returns an Answer or None
        when the client went away."""
        declared = request.headers.get("content-length")
        reservation = service.admit(int(declared) if declared and declared.isdigit() else None)
        try:
            try:
                body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            except ImageError as exc:
                raise service.refuse_input(exc) from None
            except BodyError:
                return None
            return await service.invoke(Invocation(
                body=body, content_type=request.headers.get("content-type"), inference_id=inference_id,
                custom_attributes=request.headers.get(sagemaker.CUSTOM_ATTRIBUTES)))
        finally:
            service.release(reservation)

    @app.post("/invocations", responses={**OK, **ERROR_RESPONSES}, openapi_extra=REQUEST_BODY)
    async def invocations(request: Request) -> Response:
        inference_id = next((request.headers[h] for h in INFERENCE_ID_HEADERS if h in request.headers), None)
        try:
            answer = await call(request, inference_id)
        except InvocationError as exc:
            return error(exc.status, exc.code, exc.message)
        if answer is None:
            return Response(status_code=400)
        return Response(answer.body, media_type=answer.content_type,
                        headers={"X-Signwatch-Event-Id": ",".join(answer.event_ids)})

    @app.post("/endpoints/{EndpointName}/invocations", responses={**OK, **SAGEMAKER_RESPONSES},
              openapi_extra=REQUEST_BODY)
    async def invoke_endpoint(EndpointName: str, request: Request) -> Response:  # noqa: N803 - boto3's name
        try:
            sagemaker.check_call(EndpointName, request.headers, settings.endpoint, settings.variant)
            answer = await call(request, request.headers.get(sagemaker.INFERENCE_ID))
        except InvocationError as exc:
            status, headers, body = sagemaker.error_response(exc)
            return JSONResponse(body, status_code=status, headers=headers)
        if answer is None:
            return Response(status_code=400)
        headers = {sagemaker.INVOKED_VARIANT: settings.variant, "X-Signwatch-Event-Id": ",".join(answer.event_ids)}
        attributes = request.headers.get(sagemaker.CUSTOM_ATTRIBUTES)
        if attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        return Response(answer.body, media_type=answer.content_type, headers=headers)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        ready = await run_in_threadpool(service.readiness)
        return JSONResponse(status_code=200 if all(ready.values()) else 503, content={"status": ready})

    # Live while the micro-batcher runs: without it no request can be answered, a restart helps.
    app.include_router(health_router(lambda: core.batcher.running, service.readiness, core.registry))

    _document_schemas(app)
    return app


def _document_schemas(app: FastAPI) -> None:
    """Add the error and prediction shapes the routes answer with to the OpenAPI components."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        prediction = {"type": "object", "required": ["class_id", "label", "probability"], "properties": {
            "class_id": {"type": "integer"}, "label": {"type": "string"}, "probability": {"type": "number"}}}
        schemas["Predictions"] = {"type": "object", "required": ["predictions", "model_version"], "properties": {
            "predictions": {"type": "array", "items": {"anyOf": [prediction, {"type": "array", "items": prediction}]}},
            "model_version": {"type": "string"}}}
        schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
        schemas["SageMakerError"] = {"type": "object", "required": ["message"], "properties": {
            "message": {"type": "string"}, "ErrorCode": {"type": "string"},
            "OriginalStatusCode": {"type": "integer"}, "OriginalMessage": {"type": "string"}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
