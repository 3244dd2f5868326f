"""The Open Inference Protocol's (KServe V2) metadata and health routes, as FastAPI routes.

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``/v2/health/ready``
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata; ``.../ready``: model readiness
- ``POST /v2/models/{name}[/versions/{version}]/infer``: answered by ``invocations.py`` (the hot
  path) before FastAPI's router is reached; declared here for the OpenAPI spec only

The model's name is the endpoint's (``SIGNWATCH_ENDPOINT``), its one version the model's. Errors
are ``{"error": "..."}``: 404 for another model or version, 503 while not ready.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from signwatch.serving import ServingError, v2

TAG = "Open Inference Protocol (V2)"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


INFER_BODY = {"requestBody": {
    "required": True,
    "description": f"One input: '{v2.PIXELS}' UINT8 [N, H, W, 3] or '{v2.ENCODED}' BYTES [N] (PNG or JPEG files; "
                   "base64 strings in JSON). application/octet-stream: the JSON header, then the binary tensor "
                   "data (its length in the Inference-Header-Content-Length header).",
    "content": {"application/json": {"schema": _ref("V2InferRequest")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}}
V2_ERRORS = {status: {"description": what, "content": {"application/json": {"schema": _ref("V2Error")}}}
             for status, what in ((400, "a malformed request or a refused image"), (404, "unknown model or version"),
                                  (405, "not POST"), (408, "the body did not arrive in time"),
                                  (413, "body, image or image count over its limit"),
                                  (429, "the model's queue is full: retry"), (503, "the model is not serving"))}
INFER_OK = {200: {"description": "probabilities (FP32 [N, classes]) and class_ids (INT64 [N, k], best first); "
                                 "with in-inference screening on, adversarial_score (FP32 [N]) and flagged "
                                 "(BOOL [N]) too; binary outputs follow the JSON (application/octet-stream)",
                  "content": {"application/json": {"schema": _ref("V2InferResponse")},
                              "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
NOT_FOUND = {404: V2_ERRORS[404]}
NOT_READY = {503: {"description": "not ready", "content": {"application/json": {"schema": _ref("V2Error")}}}}


def v2_router(core) -> APIRouter:
    router = APIRouter(tags=[TAG])
    service, settings = core.service, core.settings

    def found(name: str, version: str | None) -> JSONResponse | None:
        """None when this server serves the model (and version), else the 404 answer."""
        try:
            v2.check_model(name, version, settings.endpoint, service.model_version)
        except ServingError as exc:
            return JSONResponse(status_code=404, content={"error": exc.message})
        return None

    async def ready() -> bool:
        return all(service.readiness().values())  # /health/ready's rule (no I/O: see InferenceService)

    def metadata(name: str, version: str | None) -> JSONResponse:
        return found(name, version) or JSONResponse(v2.model_metadata(
            settings.endpoint, service.model_version, core.spec.num_classes, core.classifier.top_k,
            screened=service.screening is not None))

    async def model_ready(name: str, version: str | None) -> JSONResponse:
        if (missing := found(name, version)) is not None:
            return missing
        ok = await ready()
        return JSONResponse(status_code=200 if ok else 503, content={"name": name, "ready": ok})

    @router.get("/v2", summary="Server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(v2.server_metadata())

    @router.get("/v2/health/live", summary="Server live", responses=NOT_READY)
    async def live() -> JSONResponse:
        alive = core.batcher.running  # without the micro-batcher no request is answered: restart
        return JSONResponse(status_code=200 if alive else 503, content={"live": alive})

    @router.get("/v2/health/ready", summary="Server ready", responses=NOT_READY)
    async def server_ready() -> JSONResponse:
        ok = await ready()
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok})

    @router.get("/v2/models/{model_name}", summary="Model metadata", responses=NOT_FOUND)
    async def model_metadata(model_name: str) -> JSONResponse:
        return metadata(model_name, None)

    @router.get("/v2/models/{model_name}/versions/{model_version}", summary="Model metadata (a version)",
                responses=NOT_FOUND)
    async def version_metadata(model_name: str, model_version: str) -> JSONResponse:
        return metadata(model_name, model_version)

    @router.get("/v2/models/{model_name}/ready", summary="Model ready", responses={**NOT_FOUND, **NOT_READY})
    async def ready_model(model_name: str) -> JSONResponse:
        return await model_ready(model_name, None)

    @router.get("/v2/models/{model_name}/versions/{model_version}/ready", summary="Model ready (a version)",
                responses={**NOT_FOUND, **NOT_READY})
    async def ready_version(model_name: str, model_version: str) -> JSONResponse:
        return await model_ready(model_name, model_version)

    # Documented only: InvocationsMiddleware answers every path of these shapes first. A request
    # that reaches them had a path the middleware does not take as an infer path: none served.
    def unknown() -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "no such model or version"})

    @router.post("/v2/models/{model_name}/infer", summary="Infer", responses={**INFER_OK, **V2_ERRORS},
                 openapi_extra=INFER_BODY)
    async def infer(model_name: str) -> JSONResponse:
        return unknown()

    @router.post("/v2/models/{model_name}/versions/{model_version}/infer", summary="Infer (a version)",
                 responses={**INFER_OK, **V2_ERRORS}, openapi_extra=INFER_BODY)
    async def infer_version(model_name: str, model_version: str) -> JSONResponse:
        return unknown()

    return router


def v2_schemas() -> dict:
    """The OpenAPI components the V2 routes refer to."""
    parameters = {"type": "object", "properties": {
        "binary_data": {"type": "boolean"}, "binary_data_output": {"type": "boolean"},
        "binary_data_size": {"type": "integer", "minimum": 0}}}
    data = {"type": "array", "description": "UINT8: integers 0-255, flat or nested row-major; BYTES: base64 strings",
            "items": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "array"}]}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": parameters, "data": data}}
    requested = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": list(v2.OUTPUTS + v2.SCREENING_OUTPUTS),
                 "description": f"{', '.join(v2.SCREENING_OUTPUTS)}: only where the service screens in its batch "
                                "(SIGNWATCH_SCREENING_IN_INFERENCE; the model metadata then declares them)"},
        "parameters": parameters}}
    return {
        "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string", "maxLength": 64}, "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {"type": "array", "items": requested}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor}}},
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    }
