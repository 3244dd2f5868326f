"""The inference service's HTTP app: FastAPI, with the two invocation routes in front of it.

- ``POST /invocations``: SageMaker's container contract, and ``POST /endpoints/{EndpointName}/invocations``:
  its runtime API, as boto3 calls it: answered by ``invocations.py``, a lean ASGI handler in front
  of FastAPI (the hot path); declared here for the OpenAPI spec only
- ``GET /ping``: the container contract's health check
- ``/v2/...``: the Open Inference Protocol (KServe V2): its infer routes are answered by
  ``invocations.py`` too; its metadata and health routes are FastAPI's (``v2_routes.py``)
- ``GET /health/live``, ``/health/ready``, ``/metrics`` (services/health.py); ``/admin`` (admin.py)
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from signwatch.serving import sagemaker
from signwatch_services.health import health_router
from signwatch_services.inference.admin import admin_router
from signwatch_services.inference.invocations import InvocationsMiddleware
from signwatch_services.inference.v2_routes import v2_router, v2_schemas

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
_METHOD = {405: {"description": "not POST", **_schema("Error")}}


def _documented_invocations() -> APIRouter:
    """The invocation routes as the OpenAPI spec shows them; ``InvocationsMiddleware`` answers them
    before FastAPI's router is reached, so these bodies never run."""
    docs = APIRouter()

    @docs.post("/invocations", responses={**OK, **ERROR_RESPONSES, **_METHOD}, openapi_extra=REQUEST_BODY,
               summary="Invocations (SageMaker's container contract)")
    async def invocations() -> None:
        raise AssertionError("answered by InvocationsMiddleware")

    @docs.post("/endpoints/{EndpointName}/invocations", responses={**OK, **SAGEMAKER_RESPONSES, **_METHOD},
               openapi_extra=REQUEST_BODY, summary="InvokeEndpoint (SageMaker's runtime API)")
    async def invoke_endpoint(EndpointName: str) -> None:  # noqa: N803 - boto3's name
        raise AssertionError("answered by InvocationsMiddleware")

    return docs


def create_app(core) -> FastAPI:
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
    app.add_middleware(InvocationsMiddleware, core=core)
    app.include_router(_documented_invocations())
    app.include_router(v2_router(core))
    app.include_router(admin_router(core))

    @app.get("/ping")  # SageMaker's health check: the same rule as /health/ready
    async def ping() -> JSONResponse:
        ready = service.readiness()
        return JSONResponse(status_code=200 if all(ready.values()) else 503, content={"status": ready})

    # Live while the micro-batcher runs: without it no request can be answered, a restart helps.
    # Ready while it can answer; the broker and the store only show in the body (services/health.py).
    app.include_router(health_router(lambda: core.batcher.running, service.readiness, core.registry,
                                     dependencies=service.dependencies()))

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
        screened = " (SIGNWATCH_SCREENING_IN_INFERENCE on only; one per image for a batch)"
        schemas["Predictions"] = {"type": "object", "required": ["predictions", "model_version"], "properties": {
            "predictions": {"type": "array", "items": {"anyOf": [prediction, {"type": "array", "items": prediction}]}},
            "model_version": {"type": "string"},
            "adversarial_score": {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}],
                                  "description": "the image's adversarial score" + screened},
            "flagged": {"anyOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "boolean"}}],
                        "description": "adversarial_score above the calibration's threshold" + screened}}}
        schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
        schemas["SageMakerError"] = {"type": "object", "required": ["message"], "properties": {
            "message": {"type": "string"}, "ErrorCode": {"type": "string"},
            "OriginalStatusCode": {"type": "integer"}, "OriginalMessage": {"type": "string"}}}
        schemas.update(v2_schemas())
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
