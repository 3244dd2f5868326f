"""Admin endpoints of the inference service: the run-time debugger, switched on without a restart.

    PUT /admin/debugger   body: DebuggerConfig as JSON -> the new configuration and the recorder's status
    GET /admin/debugger   -> the current configuration and status

Every call needs ``Authorization: Bearer <SIGNWATCH_ADMIN_TOKEN>``, checked by
``signwatch_services.auth`` (no token configured: 403; a missing or wrong one: 401 with
``WWW-Authenticate: Bearer``). Errors use the service's JSON shape ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from signwatch.debugger import DebuggerConfig
from signwatch_services.auth import NO_STORE, admin_refusal, json_error

log = logging.getLogger(__name__)

MAX_ADMIN_BODY_BYTES = 16 * 1024


def _debugger(core):
    return getattr(core, "debugger", None) or getattr(core.classifier, "debugger", None)


def _state(debugger) -> dict:
    return {"config": debugger.config.model_dump(mode="json"), "status": debugger.status()}


async def _read_limited(request: Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def admin_router(core) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/debugger", summary="The debugger's configuration and recorder status")
    async def get_debugger(request: Request) -> JSONResponse:
        if (refused := admin_refusal(core.settings, request)) is not None:
            return refused
        debugger = _debugger(core)
        if debugger is None:
            return json_error(503, "debugger_unavailable", "this service was built without a debugger")
        return JSONResponse(_state(debugger), headers=NO_STORE)

    @router.put(
        "/debugger",
        summary="Replace the debugger's configuration (switch it on or off)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": DebuggerConfig.model_json_schema()}}}},
    )
    async def put_debugger(request: Request) -> JSONResponse:
        # Authentication first, then the body: an unauthenticated caller learns nothing of the schema.
        if (refused := admin_refusal(core.settings, request)) is not None:
            return refused
        debugger = _debugger(core)
        if debugger is None:
            return json_error(503, "debugger_unavailable", "this service was built without a debugger")
        body = await _read_limited(request, MAX_ADMIN_BODY_BYTES)
        if body is None:
            return json_error(413, "payload_too_large", f"body exceeds {MAX_ADMIN_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return json_error(400, "invalid_json", f"body is not JSON: {exc}")
        try:
            config = DebuggerConfig.model_validate(data)
        except ValidationError as exc:
            return json_error(422, "invalid_config", "body is not a valid debugger configuration",
                          details=exc.errors(include_url=False, include_context=False, include_input=False))
        try:
            # Switching on lists the store once (to resume step numbers): not on the event loop.
            await run_in_threadpool(debugger.configure, config)
        except Exception as exc:  # noqa: BLE001 - the store could not be listed
            log.exception("admin: debugger configuration failed")
            return json_error(503, "store_unavailable", f"could not prepare the tensor store: {exc}")
        log.info("admin: debugger configured by %s: %s",
                 request.client.host if request.client else "?", config.model_dump_json())
        return JSONResponse(_state(debugger), headers=NO_STORE)

    return router
